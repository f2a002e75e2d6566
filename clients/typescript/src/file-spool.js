// A durable spool of usage events in a JSON-lines file (Node only).
//
// Each `append` is one write(2) of `{"s":<seq>,"e":<event>}\n` to the file, so an event
// `record` returned for survives the end or crash of the process; `sync()` (called by the
// sender before each batch and by `flush`) fsyncs it, so it survives a power loss too. An
// acknowledged batch is one line `{"a":<last seq>}`; events refused by meter go to
// `<path>.rejected`. When nothing is pending the file is truncated, and a file grown past
// `compactBytes` is rewritten with what is pending. Opening reads the file back: the events after
// the last acknowledgement are pending, in order, with their ids; a torn last line (a crash in
// the middle of a write) is dropped. One process at a time owns a file (`<path>.lock` holds its
// pid; a lock whose process is gone is taken over).

import fs from "node:fs";
import path from "node:path";
import { MAX_BATCH_BYTES, MAX_BATCH_EVENTS, PendingQueue } from "./spool.js";

/** Thrown when another live process holds the spool file. */
export class SpoolLocked extends Error {
  constructor(file, pid) {
    super(`the spool ${file} is in use by process ${pid}`);
    this.name = "SpoolLocked";
    this.pid = pid;
  }
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (exc) {
    return exc.code === "EPERM";
  }
}

function takeLock(lockPath) {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = fs.openSync(lockPath, "wx");
      fs.writeSync(fd, String(process.pid));
      fs.closeSync(fd);
      return;
    } catch (exc) {
      if (exc.code !== "EEXIST") throw exc;
    }
    const pid = Number.parseInt(fs.readFileSync(lockPath, "utf8"), 10);
    if (Number.isInteger(pid) && pid > 0 && alive(pid)) throw new SpoolLocked(lockPath, pid);
    fs.rmSync(lockPath, { force: true });
  }
  throw new SpoolLocked(lockPath, "unknown");
}

function fsyncDir(dir) {
  let fd;
  try {
    fd = fs.openSync(dir, "r");
    fs.fsyncSync(fd);
  } catch {
    // Not every platform can fsync a directory; the rename is then as durable as it gets.
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** Events waiting to be acknowledged, in a JSON-lines file, in the order they were appended. */
export class FileSpool {
  /** Open (or create) the spool at `file`; what an earlier process left in it is pending. */
  constructor(file, { compactBytes = 16 * 1024 * 1024 } = {}) {
    this.path = path.resolve(String(file));
    this._lockPath = `${this.path}.lock`;
    this._rejectedPath = `${this.path}.rejected`;
    this._compactBytes = compactBytes;
    takeLock(this._lockPath);
    try {
      this._pending = new PendingQueue(this._load());
      this._seq = this._pending.last()?.seq ?? 0;
      this._rewrite();
    } catch (exc) {
      fs.rmSync(this._lockPath, { force: true });
      throw exc;
    }
    this._dirty = false;
    this._closed = false;
  }

  _load() {
    let text;
    try {
      text = fs.readFileSync(this.path, "utf8");
    } catch (exc) {
      if (exc.code === "ENOENT") return [];
      throw exc;
    }
    const events = [];
    let acked = 0;
    for (const raw of text.split("\n")) {
      if (!raw) continue;
      let record;
      try {
        record = JSON.parse(raw);
      } catch {
        continue; // a torn write at the end of a crashed process
      }
      if (typeof record.a === "number") acked = Math.max(acked, record.a);
      else if (typeof record.s === "number" && record.e) {
        events.push({ seq: record.s, line: JSON.stringify(record.e) });
      }
    }
    return events.filter((e) => e.seq > acked);
  }

  /** Write the pending events to a new file and put it in place (write, fsync, rename). */
  _rewrite() {
    const tmp = `${this.path}.tmp`;
    const text = this._pending
      .entries()
      .map((e) => `{"s":${e.seq},"e":${e.line}}\n`)
      .join("");
    const fd = fs.openSync(tmp, "w");
    try {
      fs.writeSync(fd, text);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, this.path);
    fsyncDir(path.dirname(this.path));
    if (this._fd !== undefined) fs.closeSync(this._fd);
    this._fd = fs.openSync(this.path, "a");
    this._bytes = Buffer.byteLength(text);
    this._pendingBytes = this._bytes;
  }

  _write(text) {
    const written = fs.writeSync(this._fd, text);
    this._bytes += written;
    return written;
  }

  /** Store one encoded event (a JSON text); returns its sequence number. */
  append(line) {
    if (this._closed) throw new Error("the spool is closed");
    const seq = this._seq + 1;
    this._pendingBytes += this._write(`{"s":${seq},"e":${line}}\n`);
    this._dirty = true; // acknowledgements need no fsync: one lost is one event sent again
    this._seq = seq;
    this._pending.push({ seq, line });
    return seq;
  }

  /** The oldest events: `[{seq, line}]`. */
  peek(limit = MAX_BATCH_EVENTS, maxBytes = MAX_BATCH_BYTES) {
    return this._pending.take(limit, maxBytes);
  }

  /** Forget the `batch` (the oldest events, as `peek` gave them); `rejections` are
   * `[{seq, code, message}]` of events meter refused, kept in `<path>.rejected`. */
  settle(batch, rejections = []) {
    if (batch.length === 0) return;
    if (rejections.length > 0) {
      const lines = rejections.map(({ seq, code, message }) => {
        const entry = batch.find((e) => e.seq === seq);
        return `{"code":${JSON.stringify(code)},"message":${JSON.stringify(message)},"event":${entry.line}}\n`;
      });
      fs.appendFileSync(this._rejectedPath, lines.join(""));
    }
    const last = batch.at(-1).seq;
    this._write(`{"a":${last}}\n`);
    for (const e of this._pending.dropThrough(last)) {
      this._pendingBytes -= Buffer.byteLength(`{"s":${e.seq},"e":${e.line}}\n`);
    }
    if (this._pending.length === 0) {
      fs.ftruncateSync(this._fd, 0);
      this._bytes = 0;
      this._pendingBytes = 0;
    } else if (this._bytes > this._compactBytes && this._bytes > 2 * this._pendingBytes) {
      this._rewrite(); // at least half of the file is acknowledged: each byte is copied O(1) times
    }
  }

  /** How many events wait to be acknowledged. */
  pending() {
    return this._pending.length;
  }

  /** Events meter refused: `[{event, code, message}]`, oldest first. */
  rejected() {
    let text;
    try {
      text = fs.readFileSync(this._rejectedPath, "utf8");
    } catch (exc) {
      if (exc.code === "ENOENT") return [];
      throw exc;
    }
    return text
      .split("\n")
      .filter(Boolean)
      .map((raw) => JSON.parse(raw));
  }

  /** fsync what was appended since the last call (synchronously: the sender calls it once
   * per batch, and a rewrite cannot close the file under it). */
  async sync() {
    if (!this._dirty || this._closed) return;
    this._dirty = false;
    fs.fsyncSync(this._fd);
  }

  /** fsync, close the file and give up the lock; what is pending stays for the next process. */
  async close() {
    if (this._closed) return;
    await this.sync();
    this._closed = true;
    fs.closeSync(this._fd);
    fs.rmSync(this._lockPath, { force: true });
  }
}
