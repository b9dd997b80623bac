// Mock LLM provider for the gateway's end-to-end tests and benchmarks.
//
// Speaks the OpenAI (chat completions, Responses, embeddings, models),
// Anthropic Messages (and count_tokens), Google Gemini and Amazon Bedrock
// Converse (binary event stream, SigV4-checked) wire formats, Google Vertex
// AI (Gemini and Claude, behind an OAuth token endpoint that verifies RS256
// service-account JWTs),
// streaming and not, and injects
// faults chosen per request through "directives" (see README.md). Every
// non-control request is recorded so tests can assert what the gateway sent
// upstream. Node standard library only; binds 127.0.0.1 only.
//
//   import { startMock } from './server.mjs';
//   const mock = await startMock();            // mock.url, mock.requests
//   ...
//   await mock.close();
//
// Standalone: `node tests/mock/server.mjs --port 0` prints {"port":N}.

import http from 'node:http';
import { createHash, createHmac, generateKeyPairSync, verify as verifySignature } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const DEFAULT_TEXT = 'Hello from the mock provider.';
const DEFAULT_CHUNKS = 4;
const DEFAULT_DRIP_INTERVAL_MS = 100;
const MAX_RECORDED_BODY_BYTES = 64 * 1024;
const DEFAULT_MAX_REQUESTS = 10_000;
const EMBEDDING_DIMS = 8;
const MOCK_PREFIX = '/_mock/';
const CONTROL_PREFIX = '/_control/';

// ---------------------------------------------------------------------------
// Directives
// ---------------------------------------------------------------------------

/** Parses `k=v,k2=v2`. A bare key means `key=1`. Values stay strings. */
function parseDirectives(text, decodeValues) {
  const out = {};
  for (const part of text.split(',')) {
    const eq = part.indexOf('=');
    const key = (eq === -1 ? part : part.slice(0, eq)).trim();
    if (!key) continue;
    const value = eq === -1 ? '1' : part.slice(eq + 1);
    out[key] = decodeValues ? safeDecode(value) : value;
  }
  return out;
}

/** `x-mock-retry-after: 2` and `x-mock-retry_after: 2` both mean `retry_after=2`. */
function headerDirectives(headers) {
  let out = null;
  for (const name in headers) {
    if (name.startsWith('x-mock-')) (out ??= {})[name.slice(7).replaceAll('-', '_')] = headers[name];
  }
  return out;
}

/** `gpt-4o;status=429` -> { name: 'gpt-4o', directives: { status: '429' } }. */
function splitModel(model) {
  if (typeof model !== 'string') return { name: model, directives: null };
  const i = model.indexOf(';');
  if (i === -1) return { name: model, directives: null };
  return { name: model.slice(0, i), directives: parseDirectives(model.slice(i + 1), false) };
}

function safeDecode(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function int(value, fallback) {
  if (value === undefined) return fallback;
  const n = Number(value);
  return Number.isFinite(n) ? Math.trunc(n) : fallback;
}

function flag(value) {
  return value !== undefined && value !== '' && value !== '0' && value !== 'false';
}

/** Fault knobs; -1 means "off" for the counters so `sent === cutAfter` never matches. */
function faultsOf(d, stream) {
  const drip = stream && flag(d.drip);
  const interval = int(d.interval_ms, 0);
  return {
    drip,
    firstByteDelay: int(d.first_byte_delay_ms, 0),
    // A drip without a positive interval would be a synchronous infinite loop.
    interval: drip && interval <= 0 ? DEFAULT_DRIP_INTERVAL_MS : interval,
    cutAfter: int(d.cut_after, -1),
    cutInside: int(d.cut_inside, -1),
    errorAfter: int(d.error_after, -1),
    malformed: flag(d.malformed),
  };
}

// ---------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------

// Greedy model segment, so the action is whatever follows the last ':'.
const GEMINI_PATH = /\/models\/([^/]+):(generateContent|streamGenerateContent|embedContent|batchEmbedContents)$/;
// Bedrock Runtime: the model id is one encoded segment (an ARN's `:` and `/` too).
const BEDROCK_PATH = /\/model\/([^/]+)\/(converse|converse-stream)$/;
// Vertex AI: Anthropic's models answer at rawPredict / streamRawPredict.
const VERTEX_ANTHROPIC_PATH = /\/publishers\/anthropic\/models\/([^/]+):(rawPredict|streamRawPredict)$/;
// A Vertex AI resource path: these routes require a token from `/token`.
const VERTEX_RESOURCE = /\/projects\/[^/]+\/locations\/[^/]+\/publishers\//;

/** Routes by path suffix so any base-URL prefix (Azure, Groq, Vertex...) works. */
function resolveRoute(method, path) {
  if (method === 'POST') {
    const vertex = VERTEX_RESOURCE.test(path);
    const g = GEMINI_PATH.exec(path);
    if (g) {
      const embed = g[2] === 'embedContent' || g[2] === 'batchEmbedContents';
      return { format: embed ? 'gemini-embeddings' : 'gemini', action: g[2], rawModel: g[1], vertex };
    }
    const va = VERTEX_ANTHROPIC_PATH.exec(path);
    if (va) return { format: 'anthropic', action: va[2], rawModel: va[1], vertex: true };
    if (path.endsWith('/token')) return { format: 'google-token' };
    const b = BEDROCK_PATH.exec(path);
    if (b) return { format: 'bedrock', action: b[2], rawModel: b[1] };
    if (path.endsWith('/chat/completions')) return { format: 'openai' };
    if (path.endsWith('/messages/count_tokens')) return { format: 'anthropic-count' };
    if (path.endsWith('/messages')) return { format: 'anthropic' };
    if (path.endsWith('/responses')) return { format: 'responses' };
    if (path.endsWith('/embeddings')) return { format: 'embeddings' };
  } else if (method === 'GET' && path.endsWith('/models')) {
    return { format: 'models' };
  }
  return { format: 'unknown' };
}

// ---------------------------------------------------------------------------
// Request text: token counts, echo, tool names
// ---------------------------------------------------------------------------

/** Text of a message content / part list in any of the three formats. */
function textOf(value, sep) {
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) {
    let out = '';
    for (const item of value) {
      const t = textOf(item, sep);
      if (t) out = out ? out + sep + t : t;
    }
    return out;
  }
  if (value && typeof value === 'object') {
    if (typeof value.text === 'string') return value.text;
    if (value.content !== undefined) return textOf(value.content, sep); // Anthropic tool_result
    if (value.parts !== undefined) return textOf(value.parts, sep); // Gemini Content
    if (value.toolResult !== undefined) return textOf(value.toolResult.content, sep); // Bedrock toolResult
  }
  return '';
}

function countWords(s) {
  const m = s.match(/\S+/g);
  return m ? m.length : 0;
}

/** All prompt text (system included), for the deterministic prompt token count. */
function promptText(format, body) {
  if (format === 'gemini') return textOf([body.systemInstruction, body.contents], ' ');
  if (format === 'anthropic' || format === 'anthropic-count' || format === 'bedrock') return textOf([body.system, body.messages], ' ');
  if (format === 'responses') return textOf([body.instructions ?? '', body.input ?? ''], ' ');
  return textOf(body.messages, ' ');
}

function lastUserText(format, body) {
  if (format === 'responses') {
    if (typeof body.input === 'string') return body.input;
    const items = Array.isArray(body.input) ? body.input : [];
    for (let i = items.length - 1; i >= 0; i--) if (items[i]?.role === 'user') return textOf(items[i].content, '');
    return '';
  }
  const list = format === 'gemini' ? body.contents : body.messages;
  if (!Array.isArray(list)) return '';
  for (let i = list.length - 1; i >= 0; i--) {
    const m = list[i];
    if (format === 'gemini' && m && (m.role === 'user' || m.role === undefined)) return textOf(m.parts, '');
    if (format !== 'gemini' && m?.role === 'user') return textOf(m.content, '');
  }
  return '';
}

/**
 * The text of the request's last tool result, in any of the four formats
 * (OpenAI `tool` message, Anthropic `tool_result` block, Gemini
 * `functionResponse`, Responses `function_call_output`); null without one.
 */
function lastToolResult(format, body) {
  let found = null;
  if (format === 'openai') {
    for (const m of body.messages ?? []) if (m?.role === 'tool') found = textOf(m.content, '');
  } else if (format === 'anthropic') {
    for (const m of body.messages ?? []) {
      for (const b of Array.isArray(m?.content) ? m.content : []) if (b?.type === 'tool_result') found = textOf(b.content ?? '', '');
    }
  } else if (format === 'gemini') {
    for (const c of body.contents ?? []) {
      for (const part of c?.parts ?? []) {
        if (!part?.functionResponse) continue;
        // A text result travels as `{"content": text}` (or `result`).
        const r = part.functionResponse.response;
        const text = typeof r?.content === 'string' ? r.content : r?.result;
        found = typeof text === 'string' ? text : JSON.stringify(r ?? null);
      }
    }
  } else if (format === 'responses') {
    for (const item of Array.isArray(body.input) ? body.input : []) {
      if (item?.type === 'function_call_output') found = typeof item.output === 'string' ? item.output : textOf(item.output, '');
    }
  }
  return found;
}

function toolNames(format, body) {
  if (format === 'bedrock') {
    const tools = body.toolConfig?.tools;
    return Array.isArray(tools) ? tools.map((t) => t?.toolSpec?.name).filter((n) => typeof n === 'string' && n) : [];
  }
  if (!Array.isArray(body.tools)) return [];
  let names;
  if (format === 'openai') names = body.tools.map((t) => t?.function?.name);
  else if (format === 'anthropic' || format === 'responses') names = body.tools.map((t) => t?.name);
  else names = body.tools.flatMap((t) => t?.functionDeclarations ?? t?.function_declarations ?? []).map((f) => f?.name);
  return names.filter((n) => typeof n === 'string' && n);
}

// ---------------------------------------------------------------------------
// Content plan: what the assistant "says", shared by all three formats
// ---------------------------------------------------------------------------

/** Splits `s` into `n` (<= s.length) roughly equal, non-empty pieces. */
function splitEven(s, n) {
  const chars = Array.from(s); // code points, so no piece splits a surrogate pair
  const pieces = [];
  for (let i = 0; i < n; i++) {
    pieces.push(chars.slice(Math.floor((i * chars.length) / n), Math.floor(((i + 1) * chars.length) / n)).join(''));
  }
  return pieces;
}

/** `n` non-empty pieces; text too short for that is replaced by "tok0 tok1 ...". */
/** The last assistant (Gemini: model) turn's text, or ''. */
function lastAssistantText(format, body) {
  const list = format === 'gemini' ? body.contents : body.messages;
  if (!Array.isArray(list)) return '';
  for (let i = list.length - 1; i >= 0; i--) {
    const m = list[i];
    if (m?.role === (format === 'gemini' ? 'model' : 'assistant')) return textOf(format === 'gemini' ? m.parts : m.content, '');
  }
  return '';
}

/** The rest of `full` after `said`, from the start of the word `said` ended in. */
function resumeText(full, said) {
  const p = said.trimEnd();
  if (!full.startsWith(p)) return undefined;
  let start = p.length;
  while (start > 0 && !/\s/.test(full[start - 1])) start--;
  return full.slice(start);
}

function splitText(text, n) {
  if (Array.from(text).length >= n) return splitEven(text, n);
  return Array.from({ length: n }, (_, i) => (i === 0 ? 'tok0' : ` tok${i}`));
}

/** Drip: the planned pieces, then more forever. */
function* endless(pieces) {
  yield* pieces;
  for (let k = 0; ; k++) yield ` drip${k}`;
}

/**
 * Everything a response needs, independent of wire format:
 * text (null when the reply is tool calls only), its pieces, tool calls,
 * canonical finish (stop|length|content_filter|tool|<raw>), P and C.
 */
function planReply(format, body, d, { seq, model, drip, headers }) {
  const chunks = Math.max(1, int(d.chunks, DEFAULT_CHUNKS));
  // tools_once: tool calls until the conversation carries a tool result,
  // then a text answer that quotes it (a two-turn tool loop on one model).
  const toolResult = flag(d.tools_once) ? lastToolResult(format, body) : null;
  const nTools = drip || toolResult !== null ? 0 : Math.max(0, int(d.tools, 0));
  let text = d.text;
  if (toolResult !== null) text = `Tool result: ${toolResult}`;
  if (text === undefined && flag(d.echo)) text = lastUserText(format, body) || undefined;
  if (text === undefined && flag(d.echo_headers)) {
    text = `anthropic-version=${headers['anthropic-version'] ?? ''} anthropic-beta=${headers['anthropic-beta'] ?? ''}`;
  }
  // resume: a continuation (a trailing assistant turn, a user prompt maybe
  // after it) gets the rest of the text, from the start of the word the
  // assistant turn ended in (so the seam repeats a little, as models do).
  if (flag(d.resume)) {
    const said = lastAssistantText(format, body);
    if (said) text = resumeText(text ?? DEFAULT_TEXT, said) ?? text;
  }
  // With tools the reply is tool calls only, unless text was asked for explicitly.
  const withText = nTools === 0 || text !== undefined;
  const pieces = withText ? splitText(text ?? DEFAULT_TEXT, chunks) : [];

  const names = toolNames(format, body);
  const tools = [];
  for (let i = 0; i < nTools; i++) {
    const args = { city: 'Paris', call: i };
    const argsJson = JSON.stringify(args);
    tools.push({
      index: i,
      name: names.length ? names[i % names.length] : 'get_weather',
      args,
      argsJson,
      argPieces: splitEven(argsJson, Math.min(argsJson.length, Math.max(2, chunks))),
    });
  }

  // Gemini sends each function call whole, so it counts as one piece there.
  let completion = pieces.length;
  for (const t of tools) completion += format === 'gemini' ? 1 : t.argPieces.length;

  return {
    seq,
    model,
    created: Math.floor(Date.now() / 1000),
    text: withText ? pieces.join('') : null,
    pieces: drip ? endless(pieces) : pieces,
    tools,
    finish: d.finish ?? (nTools ? 'tool' : 'stop'),
    promptTokens: countWords(promptText(format, body)) + 1,
    completionTokens: completion,
    usage: d.usage === undefined || flag(d.usage),
    cached: Math.max(0, int(d.cached, 0)),
    cacheWrite: Math.max(0, int(d.cache_write, 0)),
  };
}

const mapFinish = (table, finish) => table[finish] ?? finish;

/** Frames of a stream; content frames are the ones the fault counters count. */
const meta = (data) => ({ data, content: false });
const piece = (data) => ({ data, content: true });
const sseData = (obj) => `data: ${JSON.stringify(obj)}\n\n`;

// ---------------------------------------------------------------------------
// OpenAI
// ---------------------------------------------------------------------------

const OPENAI_FINISH = { stop: 'stop', length: 'length', content_filter: 'content_filter', tool: 'tool_calls' };

function openaiUsage(p) {
  return {
    prompt_tokens: p.promptTokens,
    completion_tokens: p.completionTokens,
    total_tokens: p.promptTokens + p.completionTokens,
    prompt_tokens_details: { cached_tokens: p.cached },
    completion_tokens_details: { reasoning_tokens: 0 },
  };
}

function openaiCompletion(p) {
  const message = { role: 'assistant', content: p.text, refusal: null };
  if (p.tools.length) {
    message.tool_calls = p.tools.map((t) => ({
      id: `call_mock_${t.index}`,
      type: 'function',
      function: { name: t.name, arguments: t.argsJson },
    }));
  }
  const out = {
    id: `chatcmpl-mock-${p.seq}`,
    object: 'chat.completion',
    created: p.created,
    model: p.model,
    system_fingerprint: 'fp_mock',
    choices: [{ index: 0, message, logprobs: null, finish_reason: mapFinish(OPENAI_FINISH, p.finish) }],
  };
  if (p.usage) out.usage = openaiUsage(p);
  return out;
}

function* openaiFrames(p, includeUsage) {
  const base = { id: `chatcmpl-mock-${p.seq}`, object: 'chat.completion.chunk', created: p.created, model: p.model, system_fingerprint: 'fp_mock' };
  const chunk = (delta, finish = null) => {
    const c = { ...base, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] };
    if (includeUsage) c.usage = null;
    return sseData(c);
  };
  yield meta(chunk({ role: 'assistant', content: p.text === null ? null : '' }));
  for (const text of p.pieces) yield piece(chunk({ content: text }));
  for (const t of p.tools) {
    const i = t.index;
    yield meta(chunk({ tool_calls: [{ index: i, id: `call_mock_${i}`, type: 'function', function: { name: t.name, arguments: '' } }] }));
    for (const args of t.argPieces) yield piece(chunk({ tool_calls: [{ index: i, function: { arguments: args } }] }));
  }
  yield meta(chunk({}, mapFinish(OPENAI_FINISH, p.finish)));
  if (includeUsage) yield meta(sseData({ ...base, choices: [], usage: openaiUsage(p) }));
  yield meta('data: [DONE]\n\n');
}

function openaiStream(p, body) {
  return {
    contentType: 'text/event-stream',
    frames: openaiFrames(p, p.usage && body.stream_options?.include_usage === true),
    malformedFrame: 'data: {"broken json\n\n',
    errorFrame: () => sseData({ error: { message: '[mock] injected stream error', type: 'server_error', code: null, param: null } }),
  };
}

function openaiError(status, message, code) {
  let type = 'invalid_request_error';
  let defaultCode = 'invalid_request_error';
  if (status === 401) defaultCode = 'invalid_api_key';
  else if (status === 403) defaultCode = 'permission_denied';
  else if (status === 404) defaultCode = 'not_found';
  else if (status === 429) [type, defaultCode] = ['requests', 'rate_limit_exceeded'];
  else if (status >= 500) [type, defaultCode] = ['server_error', 'server_error'];
  return { error: { message, type, param: null, code: code ?? defaultCode } };
}

/** `input` may be a string, an array of strings, a token array or an array of token arrays. */
function openaiEmbeddings(body, model) {
  const input = body.input;
  let inputs = [];
  if (typeof input === 'string') inputs = [input];
  else if (Array.isArray(input)) inputs = input.length && input.every((x) => typeof x === 'number') ? [input] : input;
  let tokens = 1;
  for (const x of inputs) tokens += typeof x === 'string' ? countWords(x) : Array.isArray(x) ? x.length : 0;
  const base64 = body.encoding_format === 'base64'; // the official OpenAI SDKs ask for this by default
  return {
    object: 'list',
    data: inputs.map((x, index) => {
      const values = embeddingVector(x);
      return { object: 'embedding', index, embedding: base64 ? Buffer.from(new Float32Array(values).buffer).toString('base64') : values };
    }),
    model,
    usage: { prompt_tokens: tokens, total_tokens: tokens },
  };
}

const MODELS_LIST = JSON.stringify({ object: 'list', data: [{ id: 'mock-model', object: 'model', created: 0, owned_by: 'mock' }] });

/** Deterministic: the same input always embeds to the same 8 floats in [-1, 1]. */
function embeddingVector(input) {
  const key = typeof input === 'string' ? input : JSON.stringify(input);
  let h = 0x811c9dc5; // FNV-1a seed, then xorshift32 per dimension
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  h ||= 1;
  const values = [];
  for (let i = 0; i < EMBEDDING_DIMS; i++) {
    h ^= h << 13;
    h ^= h >>> 17;
    h ^= h << 5;
    values.push(Math.round(((h >>> 0) / 2 ** 32) * 2e6 - 1e6) / 1e6);
  }
  return values;
}

// ---------------------------------------------------------------------------
// Anthropic
// ---------------------------------------------------------------------------

const ANTHROPIC_STOP = { stop: 'end_turn', length: 'max_tokens', content_filter: 'refusal', tool: 'tool_use', tool_calls: 'tool_use' };

/** usage=0 cannot drop Anthropic's usage (it is required), so it drops the optional cache fields. */
function anthropicUsage(p, outputTokens) {
  const u = { input_tokens: p.promptTokens, output_tokens: outputTokens };
  if (p.usage) {
    u.cache_creation_input_tokens = p.cacheWrite;
    u.cache_read_input_tokens = p.cached;
  }
  return u;
}

function anthropicMessage(p) {
  const content = [];
  if (p.text !== null) content.push({ type: 'text', text: p.text });
  for (const t of p.tools) content.push({ type: 'tool_use', id: `toolu_mock_${t.index}`, name: t.name, input: t.args });
  return {
    id: `msg_mock_${p.seq}`,
    type: 'message',
    role: 'assistant',
    model: p.model,
    content,
    stop_reason: mapFinish(ANTHROPIC_STOP, p.finish),
    stop_sequence: null,
    usage: anthropicUsage(p, p.completionTokens),
  };
}

const anthropicEvent = (obj) => `event: ${obj.type}\ndata: ${JSON.stringify(obj)}\n\n`;

function* anthropicFrames(p) {
  yield meta(anthropicEvent({
    type: 'message_start',
    message: { id: `msg_mock_${p.seq}`, type: 'message', role: 'assistant', model: p.model, content: [], stop_reason: null, stop_sequence: null, usage: anthropicUsage(p, 1) },
  }));
  yield meta(anthropicEvent({ type: 'ping' }));
  let index = 0;
  if (p.text !== null) {
    yield meta(anthropicEvent({ type: 'content_block_start', index, content_block: { type: 'text', text: '' } }));
    for (const text of p.pieces) yield piece(anthropicEvent({ type: 'content_block_delta', index, delta: { type: 'text_delta', text } }));
    yield meta(anthropicEvent({ type: 'content_block_stop', index }));
    index++;
  }
  for (const t of p.tools) {
    yield meta(anthropicEvent({ type: 'content_block_start', index, content_block: { type: 'tool_use', id: `toolu_mock_${t.index}`, name: t.name, input: {} } }));
    for (const json of t.argPieces) yield piece(anthropicEvent({ type: 'content_block_delta', index, delta: { type: 'input_json_delta', partial_json: json } }));
    yield meta(anthropicEvent({ type: 'content_block_stop', index }));
    index++;
  }
  yield meta(anthropicEvent({
    type: 'message_delta',
    delta: { stop_reason: mapFinish(ANTHROPIC_STOP, p.finish), stop_sequence: null },
    usage: { output_tokens: p.completionTokens },
  }));
  yield meta(anthropicEvent({ type: 'message_stop' }));
}

function anthropicStream(p) {
  return {
    contentType: 'text/event-stream',
    frames: anthropicFrames(p),
    malformedFrame: 'event: content_block_delta\ndata: {"broken json\n\n',
    errorFrame: () => anthropicEvent({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }),
  };
}

function anthropicError(status, message) {
  const types = { 400: 'invalid_request_error', 401: 'authentication_error', 403: 'permission_error', 404: 'not_found_error', 413: 'request_too_large', 429: 'rate_limit_error', 529: 'overloaded_error' };
  const type = types[status] ?? (status >= 500 ? 'api_error' : 'invalid_request_error');
  return { type: 'error', error: { type, message } };
}

// ---------------------------------------------------------------------------
// OpenAI Responses
// ---------------------------------------------------------------------------

function responsesUsage(p) {
  return {
    input_tokens: p.promptTokens,
    input_tokens_details: { cached_tokens: p.cached },
    output_tokens: p.completionTokens,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: p.promptTokens + p.completionTokens,
  };
}

const RESPONSES_INCOMPLETE = { length: 'max_output_tokens', content_filter: 'content_filter' };

/** A `response` object; `output` and `usage` only once it is done. */
function responsesObject(p, body, done) {
  const incomplete = RESPONSES_INCOMPLETE[p.finish];
  const output = [];
  if (done) {
    if (p.text !== null) output.push(responsesMessage(p, 'completed'));
    for (const t of p.tools) output.push(responsesCall(t, t.argsJson, 'completed'));
  }
  return {
    id: `resp_mock_${p.seq}`,
    object: 'response',
    created_at: p.created,
    status: !done ? 'in_progress' : incomplete ? 'incomplete' : 'completed',
    background: false,
    error: null,
    incomplete_details: done && incomplete ? { reason: incomplete } : null,
    instructions: body.instructions ?? null,
    max_output_tokens: body.max_output_tokens ?? null,
    model: p.model,
    output,
    parallel_tool_calls: body.parallel_tool_calls ?? true,
    previous_response_id: body.previous_response_id ?? null,
    reasoning: { effort: body.reasoning?.effort ?? null, summary: null },
    store: body.store ?? true,
    temperature: body.temperature ?? 1,
    text: body.text ?? { format: { type: 'text' } },
    tool_choice: body.tool_choice ?? 'auto',
    tools: body.tools ?? [],
    top_p: body.top_p ?? 1,
    truncation: 'disabled',
    usage: done && p.usage ? responsesUsage(p) : null,
    user: body.user ?? null,
    metadata: body.metadata ?? {},
  };
}

const responsesText = (text) => ({ type: 'output_text', text, annotations: [], logprobs: [] });

function responsesMessage(p, status) {
  const content = status === 'in_progress' ? [] : [responsesText(p.text)];
  return { id: `msg_mock_${p.seq}`, type: 'message', status, role: 'assistant', content };
}

function responsesCall(t, args, status) {
  return { id: `fc_mock_${t.index}`, type: 'function_call', status, arguments: args, call_id: `call_mock_${t.index}`, name: t.name };
}

/** Every event named, numbered from 0 as OpenAI numbers them. */
function responsesStream(p, body) {
  let seq = 0;
  const ev = (type, fields) => `event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: seq++, ...fields })}\n\n`;
  function* frames() {
    yield meta(ev('response.created', { response: responsesObject(p, body, false) }));
    yield meta(ev('response.in_progress', { response: responsesObject(p, body, false) }));
    let index = 0;
    if (p.text !== null) {
      const item_id = `msg_mock_${p.seq}`;
      const at = { item_id, output_index: index, content_index: 0 };
      yield meta(ev('response.output_item.added', { output_index: index, item: responsesMessage(p, 'in_progress') }));
      yield meta(ev('response.content_part.added', { ...at, part: responsesText('') }));
      for (const delta of p.pieces) yield piece(ev('response.output_text.delta', { ...at, delta, logprobs: [] }));
      yield meta(ev('response.output_text.done', { ...at, text: p.text, logprobs: [] }));
      yield meta(ev('response.content_part.done', { ...at, part: responsesText(p.text) }));
      yield meta(ev('response.output_item.done', { output_index: index, item: responsesMessage(p, 'completed') }));
      index++;
    }
    for (const t of p.tools) {
      const at = { item_id: `fc_mock_${t.index}`, output_index: index };
      yield meta(ev('response.output_item.added', { output_index: index, item: responsesCall(t, '', 'in_progress') }));
      for (const delta of t.argPieces) yield piece(ev('response.function_call_arguments.delta', { ...at, delta }));
      yield meta(ev('response.function_call_arguments.done', { ...at, arguments: t.argsJson }));
      yield meta(ev('response.output_item.done', { output_index: index, item: responsesCall(t, t.argsJson, 'completed') }));
      index++;
    }
    const done = responsesObject(p, body, true);
    yield meta(ev(done.status === 'completed' ? 'response.completed' : 'response.incomplete', { response: done }));
  }
  return {
    contentType: 'text/event-stream',
    frames: frames(),
    malformedFrame: 'event: response.output_text.delta\ndata: {"broken json\n\n',
    errorFrame: () => ev('error', { code: 'server_error', message: '[mock] injected stream error', param: null }),
  };
}

// ---------------------------------------------------------------------------
// Gemini
// ---------------------------------------------------------------------------

const GEMINI_FINISH = { stop: 'STOP', length: 'MAX_TOKENS', content_filter: 'SAFETY', tool: 'STOP' };

function geminiResponse(p, parts, final) {
  const candidate = { content: { parts, role: 'model' } };
  if (final) candidate.finishReason = mapFinish(GEMINI_FINISH, p.finish);
  candidate.index = 0;
  const out = { candidates: [candidate] };
  if (final && p.usage) {
    out.usageMetadata = { promptTokenCount: p.promptTokens, candidatesTokenCount: p.completionTokens, totalTokenCount: p.promptTokens + p.completionTokens };
    if (p.cached) out.usageMetadata.cachedContentTokenCount = p.cached;
  }
  out.modelVersion = p.model;
  out.responseId = `mock-${p.seq}`;
  return out;
}

function* geminiParts(p) {
  for (const text of p.pieces) yield { text };
  for (const t of p.tools) yield { functionCall: { name: t.name, args: t.args } };
}

function geminiCompletion(p) {
  const parts = p.text === null ? [] : [{ text: p.text }];
  for (const t of p.tools) parts.push({ functionCall: { name: t.name, args: t.args } });
  return geminiResponse(p, parts, true);
}

/** Yields [item, isLast]; one item of lookahead, so it works on endless (drip) iterables. */
function* withLast(iterable) {
  const it = iterable[Symbol.iterator]();
  let cur = it.next();
  while (!cur.done) {
    const next = it.next();
    yield [cur.value, next.done === true];
    cur = next;
  }
}

/**
 * `alt=sse`: SSE with CRLF CRLF separators and no [DONE]. Otherwise Gemini
 * streams one JSON array whose elements arrive progressively.
 */
function geminiStream(p, sse) {
  const wrap = sse ? (json) => `data: ${json}\r\n\r\n` : (json, first) => (first ? '[' : ',\r\n') + json;
  function* frames() {
    let first = true;
    for (const [part, last] of withLast(geminiParts(p))) {
      yield piece(wrap(JSON.stringify(geminiResponse(p, [part], last)), first));
      first = false;
    }
    if (!sse) yield meta(']');
  }
  const error = JSON.stringify({ error: { code: 500, message: '[mock] injected stream error', status: 'INTERNAL' } });
  return {
    contentType: sse ? 'text/event-stream' : 'application/json',
    frames: frames(),
    malformedFrame: sse ? 'data: {"broken json\r\n\r\n' : ',\r\n{"broken json',
    errorFrame: (sent) => (sse ? wrap(error) : wrap(error, sent === 0) + ']'),
  };
}

function geminiEmbeddings(action, body) {
  if (action === 'embedContent') return { embedding: { values: embeddingVector(textOf(body.content, '')) } };
  const requests = Array.isArray(body.requests) ? body.requests : [];
  return { embeddings: requests.map((r) => ({ values: embeddingVector(textOf(r?.content, '')) })) };
}

function geminiError(status, message) {
  const statuses = { 400: 'INVALID_ARGUMENT', 401: 'UNAUTHENTICATED', 403: 'PERMISSION_DENIED', 404: 'NOT_FOUND', 429: 'RESOURCE_EXHAUSTED', 500: 'INTERNAL', 503: 'UNAVAILABLE', 504: 'DEADLINE_EXCEEDED' };
  return { error: { code: status, message, status: statuses[status] ?? (status >= 500 ? 'INTERNAL' : 'INVALID_ARGUMENT') } };
}

// ---------------------------------------------------------------------------
// Amazon Bedrock (Converse, ConverseStream in the binary event stream)
// ---------------------------------------------------------------------------

const BEDROCK_STOP = { stop: 'end_turn', length: 'max_tokens', content_filter: 'content_filtered', tool: 'tool_use', tool_calls: 'tool_use' };
const EVENT_STREAM_TYPE = 'application/vnd.amazon.eventstream';

/** CRC-32 (IEEE), the checksum of event stream frames. */
const CRC_TABLE = Int32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});
export function crc32(buf) {
  let c = -1;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

/**
 * One event stream message: prelude (total length, headers length, prelude
 * CRC), string headers (`[[name, value]]`), payload, message CRC.
 */
export function eventStreamMessage(headers, payload) {
  const hs = Buffer.concat(headers.map(([name, value]) => {
    const n = Buffer.from(name);
    const v = Buffer.from(value);
    const h = Buffer.alloc(4 + n.length + v.length);
    h.writeUInt8(n.length, 0);
    n.copy(h, 1);
    h.writeUInt8(7, 1 + n.length); // string
    h.writeUInt16BE(v.length, 2 + n.length);
    v.copy(h, 4 + n.length);
    return h;
  }));
  const body = Buffer.from(payload);
  const total = 16 + hs.length + body.length;
  const out = Buffer.alloc(total);
  out.writeUInt32BE(total, 0);
  out.writeUInt32BE(hs.length, 4);
  out.writeUInt32BE(crc32(out.subarray(0, 8)), 8);
  hs.copy(out, 12);
  body.copy(out, 12 + hs.length);
  out.writeUInt32BE(crc32(out.subarray(0, total - 4)), total - 4);
  return out;
}

/** Bedrock pads every event with a `p` field, so clients must ignore unknown fields. */
const bedrockEvent = (type, obj) => eventStreamMessage(
  [[':event-type', type], [':content-type', 'application/json'], [':message-type', 'event']],
  JSON.stringify({ ...obj, p: 'abcdefgh' }),
);
const bedrockException = (type, message) => eventStreamMessage(
  [[':exception-type', type], [':content-type', 'application/json'], [':message-type', 'exception']],
  JSON.stringify({ message }),
);

/** usage=0 cannot drop Converse's usage (it is required), so it drops the cache fields. */
function bedrockUsage(p) {
  const u = { inputTokens: p.promptTokens, outputTokens: p.completionTokens, totalTokens: p.promptTokens + p.completionTokens };
  if (p.usage) {
    u.cacheReadInputTokens = p.cached;
    u.cacheWriteInputTokens = 0;
  }
  return u;
}

function bedrockCompletion(p) {
  const content = [];
  if (p.text !== null) content.push({ text: p.text });
  for (const t of p.tools) content.push({ toolUse: { toolUseId: `tooluse_mock_${t.index}`, name: t.name, input: t.args } });
  return {
    output: { message: { role: 'assistant', content } },
    stopReason: mapFinish(BEDROCK_STOP, p.finish),
    usage: bedrockUsage(p),
    metrics: { latencyMs: 0 },
  };
}

function* bedrockFrames(p, badCrc) {
  yield meta(bedrockEvent('messageStart', { role: 'assistant' }));
  let index = 0;
  let first = true;
  // bad_crc: the first content event's message CRC is flipped.
  const content = (frame) => {
    if (first && badCrc) frame[frame.length - 1] ^= 0xff;
    first = false;
    return piece(frame);
  };
  if (p.text !== null) {
    for (const text of p.pieces) yield content(bedrockEvent('contentBlockDelta', { contentBlockIndex: index, delta: { text } }));
    yield meta(bedrockEvent('contentBlockStop', { contentBlockIndex: index }));
    index++;
  }
  for (const t of p.tools) {
    yield meta(bedrockEvent('contentBlockStart', { contentBlockIndex: index, start: { toolUse: { toolUseId: `tooluse_mock_${t.index}`, name: t.name } } }));
    for (const input of t.argPieces) yield content(bedrockEvent('contentBlockDelta', { contentBlockIndex: index, delta: { toolUse: { input } } }));
    yield meta(bedrockEvent('contentBlockStop', { contentBlockIndex: index }));
    index++;
  }
  yield meta(bedrockEvent('messageStop', { stopReason: mapFinish(BEDROCK_STOP, p.finish) }));
  yield meta(bedrockEvent('metadata', { usage: bedrockUsage(p), metrics: { latencyMs: 0 } }));
}

function bedrockStream(p, d) {
  return {
    contentType: EVENT_STREAM_TYPE,
    frames: bedrockFrames(p, flag(d.bad_crc)),
    // Valid framing around a payload that is not JSON.
    malformedFrame: eventStreamMessage([[':event-type', 'contentBlockDelta'], [':content-type', 'application/json'], [':message-type', 'event']], '{"broken json'),
    errorFrame: () => bedrockException(d.exception ?? 'internalServerException', '[mock] injected stream error'),
  };
}

const BEDROCK_ERRORS = {
  400: 'ValidationException', 403: 'AccessDeniedException', 404: 'ResourceNotFoundException', 408: 'ModelTimeoutException',
  424: 'ModelErrorException', 429: 'ThrottlingException', 500: 'InternalServerException', 503: 'ServiceUnavailableException',
};

/** The `x-amzn-errortype` header of a status (Bedrock puts the type there, not in the body). */
function bedrockErrorType(status) {
  const type = BEDROCK_ERRORS[status] ?? (status >= 500 ? 'InternalServerException' : 'ValidationException');
  return `${type}:http://internal.amazon.com/coral/com.amazon.bedrock/`;
}

// --- SigV4: the Authorization header's shape, and the signature itself when
// the test gives the secret key (`aws_secret=...`).

const AUTHZ = /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/([^/,\s]+)\/aws4_request, ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})$/;

/** RFC 3986 encoding of every byte but the unreserved ones, as SigV4 does. */
function uriEncode(s) {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/**
 * The SigV4 signature of a request (non-S3 rules: each path segment of the
 * raw path encoded again). `headers` maps lower-case names to values.
 */
export function sigv4Signature({ method, rawPath, query = '', headers, body, secret, date, region, service, signedHeaders }) {
  const canonicalUri = rawPath.split('/').map(uriEncode).join('/') || '/';
  const canonicalQuery = query
    .split('&')
    .filter(Boolean)
    .map((kv) => {
      const i = kv.indexOf('=');
      const [k, v] = i === -1 ? [kv, ''] : [kv.slice(0, i), kv.slice(i + 1)];
      return [uriEncode(safeDecode(k)), uriEncode(safeDecode(v))];
    })
    .sort(([ak, av], [bk, bv]) => (ak < bk ? -1 : ak > bk ? 1 : av < bv ? -1 : av > bv ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  const names = signedHeaders.split(';');
  const canonicalHeaders = names.map((n) => `${n}:${String(headers[n] ?? '').trim().replace(/\s+/g, ' ')}\n`).join('');
  const payloadHash = createHash('sha256').update(body).digest('hex');
  const creq = [method, canonicalUri, canonicalQuery, canonicalHeaders, signedHeaders, payloadHash].join('\n');
  const scope = `${date.slice(0, 8)}/${region}/${service}/aws4_request`;
  const sts = ['AWS4-HMAC-SHA256', date, scope, createHash('sha256').update(creq).digest('hex')].join('\n');
  let key = `AWS4${secret}`;
  for (const part of [date.slice(0, 8), region, service, 'aws4_request']) key = createHmac('sha256', key).update(part).digest();
  return createHmac('sha256', key).update(sts).digest('hex');
}

/**
 * Checks a Bedrock request's signature. Returns null when it is acceptable,
 * else [errorType, message] for a 403 (AWS's own wording where it has one).
 */
function checkSigV4(req, d, rawPath, search, buf) {
  const h = req.headers;
  const authz = h.authorization;
  if (!authz) return ['MissingAuthenticationTokenException', 'Missing Authentication Token'];
  const m = AUTHZ.exec(authz);
  if (!m) return ['IncompleteSignatureException', `[mock] malformed SigV4 Authorization header: ${authz.slice(0, 80)}`];
  const [, , credDate, region, service, signedHeaders] = m;
  const date = h['x-amz-date'];
  if (!/^\d{8}T\d{6}Z$/.test(date ?? '')) return ['IncompleteSignatureException', '[mock] x-amz-date missing or not YYYYMMDDTHHMMSSZ'];
  if (date.slice(0, 8) !== credDate) return ['InvalidSignatureException', "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP"];
  if (service !== 'bedrock') return ['InvalidSignatureException', "Credential should be scoped to correct service: 'bedrock'."];
  if (!/^[a-z]{2}(-gov)?-[a-z]+-\d$/.test(region)) return ['InvalidSignatureException', 'Credential should be scoped to a valid region.'];
  if (d.region !== undefined && d.region !== region) return ['InvalidSignatureException', `Credential should be scoped to a valid region, not '${region}'.`];
  const names = signedHeaders.split(';');
  for (const required of ['host', 'x-amz-date']) {
    if (!names.includes(required)) return ['InvalidSignatureException', `[mock] '${required}' must be a signed header`];
  }
  if (h['x-amz-security-token'] !== undefined && !names.includes('x-amz-security-token')) {
    return ['InvalidSignatureException', '[mock] x-amz-security-token is sent but not signed'];
  }
  const sha = h['x-amz-content-sha256'];
  if (sha !== undefined && sha !== createHash('sha256').update(buf).digest('hex')) {
    return ['InvalidSignatureException', '[mock] x-amz-content-sha256 is not the hash of the body'];
  }
  if (d.aws_secret !== undefined) {
    const want = sigv4Signature({ method: req.method, rawPath, query: search, headers: h, body: buf, secret: d.aws_secret, date, region, service, signedHeaders });
    if (want !== m[6]) {
      return ['InvalidSignatureException', 'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.'];
    }
  }
  return null;
}

// ---------------------------------------------------------------------------
// Google OAuth (service accounts) and Vertex AI's token check
// ---------------------------------------------------------------------------

const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const CLOUD_PLATFORM = 'https://www.googleapis.com/auth/cloud-platform';

/**
 * A test service account: an RSA key pair made here, and the key file JSON
 * Google would issue for it, its `token_uri` pointing at `tokenUri`.
 * Register `publicKey` with the mock (`googleKeys` or `addGoogleKey`).
 */
export function googleServiceAccount(tokenUri, email = 'gateway-test@mock-project.iam.gserviceaccount.com') {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const json = JSON.stringify({
    type: 'service_account',
    project_id: 'mock-project',
    private_key_id: 'mock-key-1',
    private_key: privateKey,
    client_email: email,
    client_id: '1',
    token_uri: tokenUri,
  });
  return { email, json, publicKey };
}

const b64urlJson = (part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));

/**
 * The token endpoint: a form POST of the JWT bearer grant. The JWT must be
 * RS256, signed by a registered account's key, with that account as `iss`,
 * the cloud-platform `scope`, this endpoint as `aud`, and a current
 * `iat`/`exp` at most an hour apart. Returns [status, body].
 */
function googleToken(state, buf, tokenUrl, seq, d) {
  const refuse = (description) => [400, { error: 'invalid_grant', error_description: description }];
  const form = new URLSearchParams(buf.toString('utf8'));
  if (form.get('grant_type') !== JWT_BEARER) return [400, { error: 'unsupported_grant_type', error_description: `grant_type must be ${JWT_BEARER}` }];
  const parts = (form.get('assertion') ?? '').split('.');
  if (parts.length !== 3) return refuse('Invalid JWT: Token must be a short-lived token and in a reasonable timeframe');
  let header;
  let claims;
  try {
    header = b64urlJson(parts[0]);
    claims = b64urlJson(parts[1]);
  } catch {
    return refuse('Invalid JWT: not base64url JSON');
  }
  if (header.alg !== 'RS256') return refuse(`Invalid JWT: alg ${header.alg}, expected RS256`);
  const key = state.googleKeys.get(claims.iss);
  if (!key) return refuse(`Invalid JWT: unknown service account ${claims.iss}`);
  const signed = verifySignature('RSA-SHA256', Buffer.from(`${parts[0]}.${parts[1]}`), key, Buffer.from(parts[2], 'base64url'));
  if (!signed) return refuse('Invalid JWT Signature.');
  if (!String(claims.scope ?? '').split(' ').includes(CLOUD_PLATFORM)) return refuse(`Invalid JWT: scope ${claims.scope}`);
  if (claims.aud !== tokenUrl) return refuse(`Invalid JWT: aud ${claims.aud}, expected ${tokenUrl}`);
  const now = Math.floor(Date.now() / 1000);
  if (!(claims.iat <= now + 300 && claims.iat >= now - 300 && claims.exp > now && claims.exp - claims.iat <= 3600)) {
    return refuse('Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.');
  }
  const expiresIn = int(d.expires_in, 3599);
  const token = `ya29.mock-${seq}`;
  state.tokens.set(token, { email: claims.iss, expiresAt: Date.now() + expiresIn * 1000 });
  return [200, { access_token: token, expires_in: expiresIn, token_type: 'Bearer' }];
}

/** Vertex AI's check of `Authorization: Bearer <token from /token>`. */
function vertexAuthError(state, req) {
  const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '');
  const issued = m && state.tokens.get(m[1]);
  if (issued && issued.expiresAt > Date.now()) return null;
  return {
    error: {
      code: 401,
      message: 'Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.',
      status: 'UNAUTHENTICATED',
    },
  };
}

function errorBody(format, status) {
  const reason = status === 529 ? 'Overloaded' : http.STATUS_CODES[status] ?? 'Error';
  const message = `[mock] ${status} ${reason}`;
  if (format === 'google-token') return { error: status >= 500 ? 'internal_failure' : 'invalid_request', error_description: message };
  if (format === 'anthropic' || format === 'anthropic-count') return anthropicError(status, message);
  if (format === 'gemini' || format === 'gemini-embeddings') return geminiError(status, message);
  if (format === 'bedrock') return { message };
  return openaiError(status, message);
}

/** Headers real providers send that name their accounts (`provider_headers=1`). */
const PROVIDER_HEADERS = {
  'openai-organization': 'org-mock-account',
  'openai-project': 'proj_mock',
  'openai-processing-ms': '12',
  'anthropic-organization-id': 'mock-org-id',
  'x-request-id': 'mock-upstream-request-id',
  'set-cookie': 'mock_session=secret; Path=/; HttpOnly',
};

// ---------------------------------------------------------------------------
// Response writers
// ---------------------------------------------------------------------------

/** Resolves once everything written so far has been handed to the socket. */
const flushed = (res) => new Promise((resolve) => res.write('', resolve));

async function sendBody(res, status, headers, body, faults, pause) {
  headers['content-type'] = 'application/json';
  headers['content-length'] = Buffer.byteLength(body);
  res.writeHead(status, headers);
  if (faults.firstByteDelay > 0) {
    res.flushHeaders();
    await pause(faults.firstByteDelay);
  }
  if (status === 200 && faults.cutAfter >= 0) {
    // Promise the full length, deliver half of it, then drop the connection.
    res.write(body.slice(0, body.length >> 1));
    await flushed(res);
    res.destroy();
    return;
  }
  res.end(body);
}

/**
 * Writes a stream frame by frame (one res.write each, so each can be flushed
 * on its own), applying the content-counting faults: interval_ms between
 * content frames, malformed after the first, and cut_after / error_after
 * after the N-th (N = 0: before the first).
 */
async function sendStream(res, headers, stream, faults, pause) {
  headers['content-type'] = stream.contentType;
  headers['cache-control'] = 'no-cache';
  res.writeHead(200, headers);
  if (faults.firstByteDelay > 0) {
    res.flushHeaders();
    await pause(faults.firstByteDelay);
  }
  let sent = 0;
  const halt = async () => {
    if (sent === faults.cutAfter) {
      await flushed(res);
      res.destroy(); // no terminal chunk: the client sees a truncated body
      return true;
    }
    if (sent === faults.errorAfter) {
      res.end(stream.errorFrame(sent));
      return true;
    }
    return false;
  };
  for (const frame of stream.frames) {
    if (!frame.content) {
      res.write(frame.data);
      continue;
    }
    if (sent === 0 && (await halt())) return;
    // Throws AbortError once the client is gone, which is what stops a drip.
    if (sent > 0 && faults.interval > 0) await pause(faults.interval);
    if (sent === faults.cutInside) {
      // Half of the next event, then a clean end: a provider (or a proxy)
      // that closes inside an event.
      const bytes = Buffer.from(frame.data);
      res.end(bytes.subarray(0, Math.floor(bytes.length / 2)));
      return;
    }
    res.write(frame.data);
    sent++;
    if (sent === 1 && faults.malformed) res.write(stream.malformedFrame);
    if (await halt()) return;
  }
  res.end();
}

// ---------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function parseBody(buf) {
  if (buf.length === 0) return null;
  const text = buf.toString('utf8');
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function sendJson(res, status, value) {
  const body = typeof value === 'string' ? value : JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/**
 * Returns `pause(ms)`, a sleep that rejects with an AbortError as soon as the
 * response closes (the client went away, or close() destroyed the socket), so
 * no delay or drip outlives its connection. The AbortController is created on
 * first use: it is measurable overhead on the plain, undelayed path.
 */
function pauser(res) {
  let signal = null;
  return (ms) => {
    if (signal === null) {
      const ac = new AbortController();
      if (res.socket === null || res.socket.destroyed) ac.abort();
      else res.once('close', () => ac.abort());
      signal = ac.signal;
    }
    return sleep(ms, undefined, { signal });
  };
}

/** status, or for fail_first the failure status while the counter lasts. */
function effectiveStatus(state, d, method, path) {
  const status = int(d.status, 200);
  if (d.fail_first === undefined) return status;
  const key = `${method} ${path} ${Object.keys(d).sort().map((k) => `${k}=${d[k]}`).join(',')}`;
  const count = state.failCounts.get(key) ?? 0;
  state.failCounts.set(key, count + 1);
  if (count >= int(d.fail_first, 0)) return 200;
  return status === 200 ? 503 : status;
}

function handleControl(state, req, res, path, search) {
  req.resume();
  const { method } = req;
  if (path === '/_control/health' && method === 'GET') return sendJson(res, 200, { ok: true });
  if (path === '/_control/requests' && method === 'GET') {
    const since = Number(new URLSearchParams(search).get('since')) || 0;
    return sendJson(res, 200, state.requests.filter((r) => r.seq > since));
  }
  if (path === '/_control/requests' && method === 'DELETE') {
    state.requests.length = 0;
    return sendJson(res, 200, { ok: true });
  }
  if (path === '/_control/reset' && method === 'POST') {
    state.requests.length = 0;
    state.failCounts.clear();
    return sendJson(res, 200, { ok: true });
  }
  return sendJson(res, 404, openaiError(404, `[mock] no control route ${method} ${path}`, 'unknown_url'));
}

async function handle(state, req, res) {
  const url = req.url;
  const q = url.indexOf('?');
  const rawPath = q === -1 ? url : url.slice(0, q);
  const search = q === -1 ? '' : url.slice(q + 1);
  if (rawPath.startsWith(CONTROL_PREFIX)) return handleControl(state, req, res, rawPath, search);

  let path = rawPath;
  let pathDirectives = null;
  if (rawPath.startsWith(MOCK_PREFIX)) {
    const end = rawPath.indexOf('/', MOCK_PREFIX.length);
    pathDirectives = parseDirectives(rawPath.slice(MOCK_PREFIX.length, end === -1 ? undefined : end), true);
    path = end === -1 ? '/' : rawPath.slice(end);
  }

  const buf = await readBody(req);
  const body = parseBody(buf);
  const json = body && typeof body === 'object' && !Array.isArray(body) ? body : {};
  const route = resolveRoute(req.method, path);
  const { name, directives: modelDirectives } = splitModel(route.rawModel !== undefined ? safeDecode(route.rawModel) : json.model);
  const model = name ?? 'mock-model';
  // Later sources win: path prefix < model suffix < x-mock-* headers.
  const d = { ...pathDirectives, ...modelDirectives, ...headerDirectives(req.headers) };
  const query = Object.fromEntries(new URLSearchParams(search));

  const seq = ++state.seq;
  const entry = {
    seq,
    t: Date.now(),
    method: req.method,
    path,
    rawPath,
    query,
    headers: req.headers,
    body: buf.length > MAX_RECORDED_BODY_BYTES ? { truncated: true, length: buf.length } : body,
    // The bytes as sent, for byte-for-byte checks of pass-through.
    rawBody: buf.length > MAX_RECORDED_BODY_BYTES ? null : buf.toString('utf8'),
    directives: d,
    format: route.format,
  };
  state.record(entry);
  // A client that goes away before the answer ends (an aborted fetch: a
  // gateway's timeout, a lost hedge, a refused admission) is recorded.
  res.once('close', () => {
    if (!res.writableFinished) entry.aborted = Date.now();
  });

  const status = effectiveStatus(state, d, req.method, path);
  const pause = pauser(res);
  const headersDelay = int(d.headers_delay_ms, 0);
  if (headersDelay > 0) await pause(headersDelay);

  const { format } = route;
  const streamable = format === 'openai' || format === 'anthropic' || format === 'responses';
  let stream = format === 'gemini' ? route.action === 'streamGenerateContent' : streamable && json.stream === true;
  if (format === 'bedrock') stream = route.action === 'converse-stream';
  if (format === 'anthropic' && route.vertex) stream = route.action === 'streamRawPredict';
  const faults = faultsOf(d, stream);
  const headers = { 'x-mock-seq': String(seq) };
  if (flag(d.provider_headers)) Object.assign(headers, PROVIDER_HEADERS);

  if (format === 'unknown') {
    return sendBody(res, 404, headers, JSON.stringify(openaiError(404, `Invalid URL (${req.method} ${path})`, 'unknown_url')), faults, pause);
  }
  if (route.vertex) {
    // Google checks the token before anything else; `oauth=0` skips it.
    const denied = d.oauth === undefined || flag(d.oauth) ? vertexAuthError(state, req) : null;
    if (denied) return sendBody(res, 401, headers, JSON.stringify(denied), faults, pause);
    if (format === 'anthropic') {
      let problem = null;
      if (json.anthropic_version !== 'vertex-2023-10-16') problem = `anthropic_version: expected "vertex-2023-10-16", got ${JSON.stringify(json.anthropic_version)}`;
      else if ('model' in json) problem = 'model: Extra inputs are not permitted (Vertex AI takes the model from the URL)';
      if (problem) return sendBody(res, 400, headers, JSON.stringify(anthropicError(400, problem)), faults, pause);
    }
  }
  if (format === 'bedrock') {
    headers['x-amzn-requestid'] = `mock-${seq}`;
    // AWS checks the signature before anything else; `sigv4=0` skips it.
    const denied = d.sigv4 === undefined || flag(d.sigv4) ? checkSigV4(req, d, rawPath, search, buf) : null;
    if (denied) {
      headers['x-amzn-errortype'] = `${denied[0]}:http://internal.amazon.com/coral/com.amazon.coral.service/`;
      return sendBody(res, 403, headers, JSON.stringify({ message: denied[1] }), faults, pause);
    }
  }
  if (status !== 200) {
    if (d.retry_after !== undefined) headers['retry-after'] = d.retry_after;
    if (format === 'bedrock') headers['x-amzn-errortype'] = bedrockErrorType(status);
    return sendBody(res, status, headers, JSON.stringify(errorBody(format, status)), faults, pause);
  }
  if (!stream && flag(d.invalid_json)) return sendBody(res, 200, headers, '{"id": invalid', faults, pause);

  let payload;
  if (format === 'google-token') {
    const [tokenStatus, answer] = googleToken(state, buf, `${state.url}${rawPath}`, seq, d);
    return sendBody(res, tokenStatus, headers, JSON.stringify(answer), faults, pause);
  } else if (format === 'models') {
    payload = MODELS_LIST;
  } else if (format === 'embeddings') {
    payload = JSON.stringify(openaiEmbeddings(json, model));
  } else if (format === 'gemini-embeddings') {
    payload = JSON.stringify(geminiEmbeddings(route.action, json));
  } else if (format === 'anthropic-count') {
    payload = JSON.stringify({ input_tokens: countWords(promptText(format, json)) + 1 });
  } else {
    const plan = planReply(format, json, d, { seq, model, drip: faults.drip, headers: req.headers });
    if (stream) {
      let s;
      if (format === 'openai') s = openaiStream(plan, json);
      else if (format === 'anthropic') s = anthropicStream(plan);
      else if (format === 'bedrock') s = bedrockStream(plan, d);
      else if (format === 'responses') s = responsesStream(plan, json);
      else s = geminiStream(plan, query.alt === 'sse');
      return sendStream(res, headers, s, faults, pause);
    }
    let reply;
    if (format === 'openai') reply = openaiCompletion(plan);
    else if (format === 'anthropic') reply = anthropicMessage(plan);
    else if (format === 'bedrock') reply = bedrockCompletion(plan);
    else if (format === 'responses') reply = responsesObject(plan, json, true);
    else reply = geminiCompletion(plan);
    payload = JSON.stringify(reply);
  }
  return sendBody(res, 200, headers, payload, faults, pause);
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/**
 * Starts the mock on 127.0.0.1. `maxRequests` caps the recording (oldest
 * dropped first). Returns { port, url, requests, clear(), close() }.
 */
export async function startMock({ port = 0, maxRequests = DEFAULT_MAX_REQUESTS, googleKeys = {} } = {}) {
  const requests = [];
  const state = {
    seq: 0, // never reset, so `?since=` stays meaningful across clears
    requests,
    failCounts: new Map(),
    url: '',
    // Service accounts the token endpoint knows: client_email -> public key PEM.
    googleKeys: new Map(Object.entries(googleKeys)),
    // Access tokens it issued: token -> { email, expiresAt }.
    tokens: new Map(),
    record(entry) {
      requests.push(entry);
      if (requests.length > maxRequests) requests.splice(0, requests.length - maxRequests);
    },
  };

  const server = http.createServer({ noDelay: true }, (req, res) => {
    handle(state, req, res).catch((err) => {
      if (err?.name === 'AbortError') return; // the client left during a delay or stream
      console.error('[mock] handler error:', err);
      if (!res.headersSent) sendJson(res, 500, openaiError(500, `[mock] internal error: ${err?.message}`));
      else res.destroy();
    });
  });
  // Longer than typical client pools' idle time, so a reused connection is not
  // closed under the client mid-benchmark.
  server.keepAliveTimeout = 30_000;

  // Tracked so close() can end drips and idle keep-alive connections at once.
  const sockets = new Set();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });

  const actualPort = server.address().port;
  state.url = `http://127.0.0.1:${actualPort}`;
  let closing = null;
  return {
    port: actualPort,
    url: state.url,
    requests,
    clear() {
      requests.length = 0;
    },
    /** Lets the token endpoint verify JWTs of this service account. */
    addGoogleKey(email, publicKeyPem) {
      state.googleKeys.set(email, publicKeyPem);
    },
    close() {
      closing ??= new Promise((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      });
      return closing;
    },
  };
}

// ---------------------------------------------------------------------------
// CLI: node tests/mock/server.mjs [--port N]
// ---------------------------------------------------------------------------

function isMain() {
  if (!process.argv[1]) return false;
  try {
    return realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) {
  const args = process.argv.slice(2);
  let port = 0;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--port') port = Number(args[++i]);
    else if (args[i].startsWith('--port=')) port = Number(args[i].slice('--port='.length));
    else {
      console.error(`usage: node server.mjs [--port N]  (unknown argument: ${args[i]})`);
      process.exit(2);
    }
  }
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`invalid --port: ${port}`);
    process.exit(2);
  }
  const mock = await startMock({ port });
  process.stdout.write(`${JSON.stringify({ port: mock.port })}\n`);
  const stop = () => mock.close().then(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}
