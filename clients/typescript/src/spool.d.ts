/** One spooled event: its sequence number and its JSON text. */
export interface SpoolEntry {
  readonly seq: number;
  readonly line: string;
}

export interface Rejection {
  seq: number;
  code: string;
  message: string;
}

/** An event meter refused, set aside with its error. */
export interface RejectedEvent {
  event: unknown;
  code: string;
  message: string;
}

/** What the client's sender needs of a spool: `MemorySpool`, `FileSpool`, or your own. */
export interface Spool {
  append(line: string): number;
  peek(limit?: number, maxBytes?: number): SpoolEntry[];
  settle(batch: SpoolEntry[], rejections?: Rejection[]): void | Promise<void>;
  pending(): number;
  rejected(): RejectedEvent[];
  sync(): Promise<void>;
  close(): Promise<void>;
}

export declare const MAX_BATCH_EVENTS: 1000;
export declare const MAX_BATCH_BYTES: number;

/** Events in memory (edge runtimes): they survive an outage of meter, not the process. */
export declare class MemorySpool implements Spool {
  constructor();
  append(line: string): number;
  peek(limit?: number, maxBytes?: number): SpoolEntry[];
  settle(batch: SpoolEntry[], rejections?: Rejection[]): void;
  pending(): number;
  rejected(): RejectedEvent[];
  sync(): Promise<void>;
  close(): Promise<void>;
}
