// The spool of usage events and the background sender that empties it, in order.
//
// `record` appends the encoded event to a spool; the sender posts the oldest events as one
// `application/cloudevents-batch+json` request and forgets them only when meter answered 202
// (events meter refused one by one move aside, to `rejected()`). When meter cannot be reached
// the events stay and the sender retries with backoff (0.5 s doubling to 30 s, jittered). Events
// keep their `source` and `id`, and meter settles an event once per `source` and `id`, so an
// event sent twice (its acknowledgement lost) is still counted once.
//
// `MemorySpool` keeps the events in memory (edge runtimes, tests): they survive an outage of
// meter, not the end of the process. `FileSpool` (`./file-spool.js`, Node only) keeps them in a
// JSON-lines file that survives the process.

import { batchBody, BATCH } from "./events.js";
import { MeterError } from "./errors.js";

export const MAX_BATCH_EVENTS = 1000;
/** Below the API's 1 MiB per batch, leaving room for the brackets and commas. */
export const MAX_BATCH_BYTES = 900 * 1024;

/** The oldest `limit` entries of `pending` from index `head`, about `maxBytes` at most (at
 * least one). */
export function takeBatch(pending, head, limit, maxBytes) {
  const out = [];
  let size = 0;
  for (let i = head; i < pending.length && out.length < limit; i++) {
    const entry = pending[i];
    size += entry.line.length + 1;
    if (out.length > 0 && size > maxBytes) break;
    out.push(entry);
  }
  return out;
}

/** A queue of spooled entries: appended at the end, acknowledged from the front in O(1). */
export class PendingQueue {
  constructor(entries = []) {
    this._items = entries;
    this._head = 0;
  }

  push(entry) {
    this._items.push(entry);
  }

  get length() {
    return this._items.length - this._head;
  }

  last() {
    return this.length > 0 ? this._items.at(-1) : undefined;
  }

  take(limit, maxBytes) {
    return takeBatch(this._items, this._head, limit, maxBytes);
  }

  /** Drop the entries up to `seq`, returning them. */
  dropThrough(seq) {
    const start = this._head;
    while (this._head < this._items.length && this._items[this._head].seq <= seq) this._head += 1;
    const dropped = this._items.slice(start, this._head);
    if (this._head > 1024 && this._head * 2 > this._items.length) {
      this._items = this._items.slice(this._head);
      this._head = 0;
    }
    return dropped;
  }

  entries() {
    return this._items.slice(this._head);
  }
}

/** Events waiting to be acknowledged, in memory, in the order they were appended. */
export class MemorySpool {
  constructor() {
    this._pending = new PendingQueue();
    this._rejected = [];
    this._seq = 0;
  }

  /** Store one encoded event (a JSON text); returns its sequence number. */
  append(line) {
    this._seq += 1;
    this._pending.push({ seq: this._seq, line });
    return this._seq;
  }

  /** The oldest events: `[{seq, line}]`. */
  peek(limit = MAX_BATCH_EVENTS, maxBytes = MAX_BATCH_BYTES) {
    return this._pending.take(limit, maxBytes);
  }

  /** Forget the `batch` (the oldest events, as `peek` gave them); `rejections` are
   * `[{seq, code, message}]` of events meter refused, kept aside. */
  settle(batch, rejections = []) {
    for (const { seq, code, message } of rejections) {
      const entry = batch.find((e) => e.seq === seq);
      if (entry) this._rejected.push({ event: JSON.parse(entry.line), code, message });
    }
    this._pending.dropThrough(batch.at(-1)?.seq ?? 0);
  }

  /** How many events wait to be acknowledged. */
  pending() {
    return this._pending.length;
  }

  /** Events meter refused: `[{event, code, message}]`, oldest first. */
  rejected() {
    return [...this._rejected];
  }

  /** Make what was appended durable (nothing to do in memory). */
  async sync() {}

  async close() {}
}

function sleepUnref(ms, wake) {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    timer?.unref?.();
    wake.add(done);
    function done() {
      clearTimeout(timer);
      wake.delete(done);
      resolve();
    }
  });
}

/**
 * Posts a spool's events in batches, oldest first, on the event loop. Its timers do not keep a
 * Node process alive: `flush()` (or `close()`) does while it waits.
 */
export class Sender {
  constructor(spool, post, { batchSize = 100, intervalMs = 200, timeoutMs = 5000, logger }) {
    this.spool = spool;
    this._post = post;
    this._batchSize = Math.max(1, Math.min(batchSize, MAX_BATCH_EVENTS));
    this._intervalMs = intervalMs;
    this._timeoutMs = timeoutMs;
    this._logger = logger;
    this._appended = 0;
    this._wakers = new Set();
    this._onStop = new Set();
    this._idle = new Set();
    this._stopped = false;
    this._inFlight = null;
    this._loop = this._run();
  }

  /** Send now rather than at the next interval. */
  wake() {
    for (const done of [...this._wakers]) done();
  }

  /** Count one appended event; wake the sender once a batch is waiting. */
  wakeIfFull() {
    this._appended += 1;
    if (this._appended >= this._batchSize) {
      this._appended = 0;
      this.wake();
    }
  }

  /** Wait until the spool is empty, at most `timeoutMs`; true if it is. */
  async flush(timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    // A timer that keeps the process alive while the caller waits.
    const keepAlive = setInterval(() => {}, 1000);
    try {
      while (this.spool.pending() > 0 && !this._stopped) {
        const left = deadline - Date.now();
        if (left <= 0) break;
        this.wake();
        await sleepUnref(Math.min(left, 50), this._idle);
      }
    } finally {
      clearInterval(keepAlive);
    }
    await this.spool.sync();
    return this.spool.pending() === 0;
  }

  /** Stop after aborting the request in flight; unsent events stay in the spool. */
  async stop() {
    this._stopped = true;
    this._inFlight?.abort(new DOMException("the client is closing", "AbortError"));
    this.wake();
    for (const done of [...this._onStop]) done();
    await this._loop;
  }

  async _run() {
    let backoff = 500;
    while (!this._stopped) {
      if (this.spool.pending() === 0) {
        await sleepUnref(this._intervalMs, this._wakers);
        continue;
      }
      let sent;
      try {
        sent = await this._sendOneBatch();
      } catch (exc) {
        if (this._stopped) break;
        const why = exc instanceof MeterError ? exc.message : String(exc);
        this._logger?.warn?.(`meter-client: events stay spooled (${why}); retry in ${backoff} ms`);
        await sleepUnref(backoff * (0.8 + 0.4 * Math.random()), this._onStop);
        backoff = Math.min(backoff * 2, 30_000);
        continue;
      }
      backoff = 500;
      for (const done of [...this._idle]) done();
      if (sent < this._batchSize) await sleepUnref(this._intervalMs, this._wakers);
    }
  }

  async _sendOneBatch() {
    await this.spool.sync(); // what is sent was durable first
    const batch = this.spool.peek(this._batchSize);
    const controller = new AbortController();
    this._inFlight = controller;
    const timer = setTimeout(
      () => controller.abort(new DOMException("meter did not answer in time", "TimeoutError")),
      this._timeoutMs,
    );
    let body;
    try {
      body = await this._post(
        "/v1/events",
        batchBody(batch.map((e) => e.line)),
        BATCH,
        controller.signal,
      );
    } finally {
      clearTimeout(timer);
      this._inFlight = null;
    }
    const rejections = [];
    for (const result of body?.results ?? []) {
      if (result.accepted) continue;
      const entry = batch[Number(result.index)];
      const error = result.error ?? {};
      rejections.push({ seq: entry.seq, code: String(error.code), message: String(error.message) });
      this._logger?.error?.(`meter-client: meter refused an event: ${error.code}`);
    }
    await this.spool.settle(batch, rejections);
    return batch.length;
  }
}
