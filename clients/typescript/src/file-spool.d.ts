import type { Rejection, RejectedEvent, Spool, SpoolEntry } from "./spool.js";

/** Thrown when another live process holds the spool file. */
export declare class SpoolLocked extends Error {
  readonly pid: number | string;
}

/** A durable JSON-lines spool file (Node only); one process at a time owns it. */
export declare class FileSpool implements Spool {
  constructor(file: string, options?: { compactBytes?: number });
  readonly path: string;
  append(line: string): number;
  peek(limit?: number, maxBytes?: number): SpoolEntry[];
  settle(batch: SpoolEntry[], rejections?: Rejection[]): void;
  pending(): number;
  rejected(): RejectedEvent[];
  sync(): Promise<void>;
  close(): Promise<void>;
}
