// The baseline: a minimal pass-through worker. It forwards every request,
// method, headers, body and path unchanged, to the same upstream the gateway
// uses (`UPSTREAM`, e.g. http://127.0.0.1:PORT), and streams the answer back.
export default {
  fetch(request, env) {
    const url = new URL(request.url);
    return fetch(env.UPSTREAM + url.pathname + url.search, request);
  },
};
