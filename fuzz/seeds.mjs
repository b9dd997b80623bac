// Writes each fuzz target's starting corpus (fuzz/corpus/<target>/seed-*)
// from the repository's own fixtures: real provider streams, answers,
// requests and configs, each behind the selector and split bytes its target
// reads first. Run by scripts/fuzz; libFuzzer keeps what it finds beside
// them, so the corpus grows from run to run.

import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const FIX = path.join(ROOT, 'tests/fixtures');

function files(dir, test) {
  return readdirSync(path.join(FIX, dir)).filter(test).map((f) => readFileSync(path.join(FIX, dir, f)));
}

const seeds = new Map();
function add(target, prefix, bodies) {
  if (!seeds.has(target)) seeds.set(target, []);
  for (const body of bodies) seeds.get(target).push(Buffer.concat([Buffer.from(prefix), body]));
}

const openaiStreams = [...files('anthropic', (f) => f.endsWith('.openai.sse')), ...files('gemini', (f) => f.endsWith('.openai.sse'))];
const anthropicStreams = files('anthropic', (f) => f.endsWith('.anthropic.sse'));
const geminiStreams = files('gemini', (f) => f.endsWith('.gemini.sse'));
const responsesStreams = files('ingress', (f) => f.endsWith('.responses.sse'));
const bindingStreams = files('workers_ai', (f) => f.endsWith('.binding.sse'));
const eventStreams = files('bedrock', (f) => f.endsWith('.eventstream'));
const splits = [[0, 0, 0, 0], [0, 40, 1, 7], [3, 1, 200, 9]];

for (const s of splits) add('sse', s, [...openaiStreams, ...anthropicStreams, ...geminiStreams, ...responsesStreams]);
for (const sel of [0, 1, 2]) for (const s of splits) add('stream_openai', [sel, ...s], openaiStreams);
for (const s of splits) add('stream_openai', [3, ...s], bindingStreams);
for (const sel of [0, 1, 2, 3]) for (const s of splits) add('stream_anthropic', [sel, ...s], anthropicStreams);
for (const sel of [0, 1]) for (const s of splits) add('stream_gemini', [sel, ...s], geminiStreams);
for (const sel of [0, 1]) for (const s of splits) add('stream_bedrock', [sel, ...s], eventStreams);
for (const s of splits) {
  add('stream_messages', [0, ...s], anthropicStreams);
  add('stream_messages', [1, ...s], openaiStreams);
  add('stream_messages', [2, ...s], geminiStreams);
  add('stream_responses', [0, ...s], responsesStreams);
  add('stream_responses', [1, ...s], anthropicStreams);
  add('stream_responses', [2, ...s], geminiStreams);
  add('stream_responses', [3, ...s], openaiStreams);
}

// Whole answers: selector % 8 picks the provider (fuzz_targets/responses.rs
// TARGETS), / 8 % 4 the client (chat, Messages, Responses; 3: error bodies).
const answers = {
  0: [...files('anthropic', (f) => f.startsWith('response_') && f.endsWith('.openai.json')), ...files('ingress', (f) => f.startsWith('response_') && f.endsWith('.responses.json'))],
  1: files('anthropic', (f) => f.startsWith('response_') && f.endsWith('.anthropic.json')),
  2: files('gemini', (f) => f.startsWith('response_') && f.endsWith('.gemini.json')),
  3: files('anthropic', (f) => f.startsWith('response_') && f.endsWith('.openai.json')),
  4: files('bedrock', (f) => f.startsWith('response_') && f.endsWith('.bedrock.json')),
  5: files('gemini', (f) => f.startsWith('response_') && f.endsWith('.gemini.json')),
  6: files('workers_ai', (f) => f.startsWith('response_') && f.endsWith('.binding.json')),
  7: files('anthropic', (f) => f.startsWith('response_') && f.endsWith('.openai.json')),
};
const errors = [...files('anthropic', (f) => f.startsWith('error_')), ...files('gemini', (f) => f.startsWith('error_')), ...files('bedrock', (f) => f.startsWith('error_'))];
for (const client of [0, 1, 2]) for (const [p, bodies] of Object.entries(answers)) add('responses', [client * 8 + Number(p)], bodies);
for (const p of [0, 1, 2, 3, 4, 5, 6, 7]) add('responses', [24 + p], errors);

// Requests: selector % 5 picks the parser.
add('ingress', [0], [...files('anthropic', (f) => f.startsWith('request_') && f.endsWith('.openai.json')), ...files('gemini', (f) => f.startsWith('request_') && f.endsWith('.openai.json'))]);
const messagesRequests = files('ingress', (f) => f.startsWith('messages_request') && f.endsWith('.anthropic.json'));
add('ingress', [1], messagesRequests);
add('ingress', [2], messagesRequests);
add('ingress', [3], files('ingress', (f) => f.startsWith('responses_request') && f.endsWith('.responses.json')));
add('ingress', [4], files('gemini', (f) => f.startsWith('embed_request') && f.endsWith('.openai.json')));

add('config', [], [readFileSync(path.join(ROOT, 'src/config/default.json')), Buffer.from(JSON.stringify({
  version: 1,
  providers: {
    a: { kind: 'azure', base_url: 'https://x', jurisdiction: 'us', attributes: ['hipaa'], headers: { 'x-a': 'b' } },
    o: { kind: 'openai', location: { lat: 1, lon: 2 }, models: { m: { input_per_mtok: 1, output_per_mtok: 2, tools: false } } },
  },
  models: { m: { targets: [{ provider: 'a', model: 'm', weight: 2, attributes: ['zdr'] }], strategy: { type: 'weighted', sticky: 'key' }, pii: { mode: 'restore', kinds: ['email', 'emp'] },
    rules: [{ when: { headers: { 'x-t': '1' }, min_input_tokens: 5 }, targets: [{ provider: 'o', model: 'm' }], strategy: { type: 'nearest' } }] } },
  residency: [{ origin: { eu: true, countries: ['CH'] }, jurisdictions: ['eu'] }],
  data_classes: { phi: { require: ['hipaa'], jurisdictions: ['us'], pii: { mode: 'block' } } },
  pii: { patterns: { emp: { masks: ['EMP-#{6}'], terms: ['Falcon'] } } },
  cors: { origins: ['https://app.example'], max_age_s: 60 },
  limits: { max_body_bytes: 1000, max_json_depth: 32, max_messages: 10 },
  failover: { max_attempts: 2, breaker: { failures: 3 } },
}))]);

add('pii', [0, 5, 1, 9], [
  'Mail jane.doe+x@mail.example.co.uk or call +1 (415) 555-0132 today.',
  'Card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, SSN 123-45-6789.',
  'From 192.168.0.1 and 2001:db8::8a2e:370:7334; EMP-004211 on Project Falcon.',
  '[EMAIL_1] [x] [ nothing 1717171717 v1.2.3.4.5 std::vec',
].map((t) => Buffer.from(t)));

// Inputs that once crashed a target (fuzz/regressions/TARGET/*) stay in
// its corpus, so every run checks them first.
const REGRESSIONS = path.join(ROOT, 'fuzz/regressions');
for (const target of readdirSync(REGRESSIONS)) {
  for (const f of readdirSync(path.join(REGRESSIONS, target))) {
    add(target, [], [readFileSync(path.join(REGRESSIONS, target, f))]);
  }
}

for (const [target, bodies] of seeds) {
  const dir = path.join(ROOT, 'fuzz/corpus', target);
  mkdirSync(dir, { recursive: true });
  bodies.forEach((b, i) => writeFileSync(path.join(dir, `seed-${i}`), b));
}
console.log([...seeds].map(([t, b]) => `${t}: ${b.length} seeds`).join(', '));
