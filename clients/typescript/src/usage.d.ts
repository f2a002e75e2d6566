import type { CreditsIn, CreditsText } from "./credits.js";
import type { AttributeValue } from "./events.js";

/** Credits per million tokens of each kind; cached input and cache writes cost the input price
 * unless given. */
export interface Prices {
  input: CreditsIn;
  output: CreditsIn;
  cachedInput?: CreditsIn | null;
  cacheWrite?: CreditsIn | null;
}

export interface TokenUsageInit {
  provider: string;
  inputTokens: number;
  outputTokens: number;
  cachedInputTokens?: number;
  cacheWriteTokens?: number;
  reasoningTokens?: number;
  model?: string | null;
}

/** Token counts of one model response, normalised across providers. */
export declare class TokenUsage {
  constructor(init: TokenUsageInit);
  readonly provider: string;
  readonly inputTokens: number;
  readonly outputTokens: number;
  readonly cachedInputTokens: number;
  readonly cacheWriteTokens: number;
  readonly reasoningTokens: number;
  readonly model: string | null;
  readonly totalTokens: number;
  attributes(): Record<string, AttributeValue>;
  /** Priced at `prices`, rounded up to the micro-credit, as an exact decimal string. */
  credits(prices: Prices): CreditsText;
}

/** Usage of an OpenAI chat completion or Responses API response (or its `usage`). */
export declare function fromOpenAI(response: object): TokenUsage;
/** Usage of an Anthropic Messages API response (or its `usage`). */
export declare function fromAnthropic(response: object): TokenUsage;
