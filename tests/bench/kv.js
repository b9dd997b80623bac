// A tiny Workers KV namespace for plain workerd, which has no KV of its own.
// A capnp `kvNamespace = (name = "kv")` binding sends its operations to this
// service as HTTP (workerd src/workerd/api/kv.c++):
//   GET    https://fake-host/<key>?urlencoded=true   -> 200 value | 404 missing
//   PUT    https://fake-host/<key>?urlencoded=true   body = value
//   DELETE https://fake-host/<key>?urlencoded=true
// The key `config` starts as the `CONFIG` text binding (the routing document
// the benchmark generated); PUTs are kept in memory for the process lifetime.
const stored = new Map();

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const key = decodeURIComponent(url.pathname.slice(1));
    switch (request.method) {
      case 'GET': {
        const value = stored.has(key) ? stored.get(key) : key === 'config' ? env.CONFIG : undefined;
        return value === undefined ? new Response(null, { status: 404 }) : new Response(value);
      }
      case 'PUT':
        stored.set(key, await request.text());
        return new Response(null);
      case 'DELETE':
        stored.set(key, undefined); // deleted: no fallback to CONFIG either
        return new Response(null);
      default:
        return new Response('not supported by the benchmark KV', { status: 501 });
    }
  },
};
