// A tiny Cache API store for plain workerd, which has none of its own. A
// worker whose config names this service as its `cacheApiOutbound` sends
// its cache operations here as HTTP:
//   cache.match(url) -> GET <url>; answer `Cf-Cache-Status: HIT` with the
//                       stored response (status, headers, body), or `MISS`
//   cache.put(url, r) -> PUT <url>, the body the serialised HTTP/1.1 response
//                       (status line, headers, blank line, body); answer 204
//   cache.delete(url) -> PURGE <url>; 200 when it was there, 404 when not
// Entries live in memory for the process's lifetime; `max-age` is not
// enforced (a benchmark's entries outlive no TTL it uses).
const stored = new Map();

/** Splits a serialised HTTP response into its parts. */
function parse(bytes) {
  const text = new TextDecoder('latin1').decode(bytes);
  const end = text.indexOf('\r\n\r\n');
  const head = text.slice(0, end).split('\r\n');
  const status = Number(head[0].split(' ')[1]) || 200;
  const headers = [];
  for (const line of head.slice(1)) {
    const i = line.indexOf(':');
    if (i > 0) headers.push([line.slice(0, i).trim(), line.slice(i + 1).trim()]);
  }
  return { status, headers, body: bytes.slice(end + 4) };
}

export default {
  async fetch(request) {
    const key = request.url;
    switch (request.method) {
      case 'GET': {
        const hit = stored.get(key);
        if (!hit) return new Response(null, { headers: { 'cf-cache-status': 'MISS' } });
        const headers = new Headers(hit.headers);
        headers.set('cf-cache-status', 'HIT');
        return new Response(hit.body, { status: hit.status, headers });
      }
      case 'PUT':
        stored.set(key, parse(new Uint8Array(await request.arrayBuffer())));
        return new Response(null, { status: 204 });
      case 'PURGE':
        return new Response(null, { status: stored.delete(key) ? 200 : 404 });
      default:
        return new Response('not supported by the benchmark cache', { status: 501 });
    }
  },
};
