// The runtime's floor for a per-key Durable Object admission: the same work
// as the gateway's KeyObject (src/edge/key_object.rs), in plain JavaScript,
// so scripts/bench can tell what the runtime itself costs from what the Rust
// glue adds. SQLite-backed like KeyObject: the table is created and the state
// loaded once per object, `admit` saves it on every call, `usage` only reads.
//   GET /health  no Durable Object
//   GET /usage   one round trip, read only
//   GET /admit   one round trip with a write
import { DurableObject } from 'cloudflare:workers';

export class FloorObject extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.state = null;
  }

  async fetch(request) {
    const command = await request.json();
    if (this.state === null) {
      this.sql.exec('CREATE TABLE IF NOT EXISTS key_state (id INTEGER PRIMARY KEY CHECK (id = 1), json TEXT NOT NULL)');
      const rows = this.sql.exec('SELECT json FROM key_state WHERE id = 1').toArray();
      this.state = rows.length ? JSON.parse(rows[0].json) : { requests: 0, first_request_ms: 0, last_request_ms: 0 };
    }
    if (command.op === 'admit') {
      const now = Date.now();
      this.state.requests += 1;
      if (this.state.first_request_ms === 0) this.state.first_request_ms = now;
      this.state.last_request_ms = Math.max(this.state.last_request_ms, now);
      this.sql.exec(
        'INSERT INTO key_state (id, json) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET json = excluded.json',
        JSON.stringify(this.state),
      );
    }
    return Response.json({ admitted: true, state: this.state });
  }
}

export default {
  async fetch(request, env) {
    const { pathname } = new URL(request.url);
    if (pathname === '/health') return Response.json({ status: 'ok' });
    const op = pathname === '/admit' ? 'admit' : 'usage';
    const stub = env.FLOOR_OBJECTS.getByName('one-key');
    const reply = await stub.fetch('https://floor-object/', { method: 'POST', body: JSON.stringify({ op }) });
    return Response.json(await reply.json());
  },
};
