// Token usage of an OpenAI or Anthropic response, as event attributes and credits.
//
// Meter counts credits; it does not yet rate usage itself, so the price of a token in credits is
// the product's own (`prices`: credits per million tokens). Both providers are normalised to the
// same counts: `inputTokens` read at the full price, `cachedInputTokens` read from the prompt
// cache, `cacheWriteTokens` written to it, `outputTokens` (reasoning included) and
// `reasoningTokens`, the reasoning part, for information.

import { formatMicro, microCredits } from "./credits.js";

const MILLION = 1_000_000n;

function count(doc, key) {
  const value = doc?.[key];
  return Number.isSafeInteger(value) && value >= 0 ? value : 0;
}

function usageOf(response) {
  if (response === null || typeof response !== "object") {
    throw new TypeError(`expected a response or its usage, not ${response === null ? "null" : typeof response}`);
  }
  const model = typeof response.model === "string" ? response.model : null;
  const usage = response.usage !== undefined && response.usage !== null ? response.usage : response;
  return { usage, model };
}

/** Token counts of one model response, normalised across providers. */
export class TokenUsage {
  constructor({
    provider,
    inputTokens,
    outputTokens,
    cachedInputTokens = 0,
    cacheWriteTokens = 0,
    reasoningTokens = 0,
    model = null,
  }) {
    this.provider = provider;
    this.inputTokens = inputTokens;
    this.outputTokens = outputTokens;
    this.cachedInputTokens = cachedInputTokens;
    this.cacheWriteTokens = cacheWriteTokens;
    this.reasoningTokens = reasoningTokens;
    this.model = model;
    Object.freeze(this);
  }

  /** Every input and output token. */
  get totalTokens() {
    return this.inputTokens + this.cachedInputTokens + this.cacheWriteTokens + this.outputTokens;
  }

  /** Event attributes (`data.attributes`): the counts, the provider and the model (the same
   * names as the Python client's). */
  attributes() {
    const out = {
      provider: this.provider,
      input_tokens: this.inputTokens,
      output_tokens: this.outputTokens,
      cached_input_tokens: this.cachedInputTokens,
      cache_write_tokens: this.cacheWriteTokens,
      reasoning_tokens: this.reasoningTokens,
    };
    if (this.model) out.model = this.model.slice(0, 256);
    return out;
  }

  /**
   * The usage priced at `prices` (`{input, output, cachedInput?, cacheWrite?}`, credits per
   * million tokens; cached input and cache writes cost the input price unless given), as an
   * exact decimal string rounded up to the micro-credit.
   */
  credits(prices) {
    const input = microCredits(prices.input);
    const output = microCredits(prices.output);
    const cached = prices.cachedInput !== undefined && prices.cachedInput !== null ? microCredits(prices.cachedInput) : input;
    const written = prices.cacheWrite !== undefined && prices.cacheWrite !== null ? microCredits(prices.cacheWrite) : input;
    const total =
      BigInt(this.inputTokens) * input +
      BigInt(this.cachedInputTokens) * cached +
      BigInt(this.cacheWriteTokens) * written +
      BigInt(this.outputTokens) * output;
    return formatMicro((total + MILLION - 1n) / MILLION);
  }
}

/** Usage of an OpenAI chat completion or Responses API response (the object, or its usage). */
export function fromOpenAI(response) {
  const { usage, model } = usageOf(response);
  let prompt;
  let output;
  let cached;
  let reasoning;
  if ("prompt_tokens" in usage) {
    prompt = count(usage, "prompt_tokens");
    output = count(usage, "completion_tokens");
    cached = count(usage.prompt_tokens_details, "cached_tokens");
    reasoning = count(usage.completion_tokens_details, "reasoning_tokens");
  } else {
    prompt = count(usage, "input_tokens");
    output = count(usage, "output_tokens");
    cached = count(usage.input_tokens_details, "cached_tokens");
    reasoning = count(usage.output_tokens_details, "reasoning_tokens");
  }
  return new TokenUsage({
    provider: "openai",
    inputTokens: prompt - cached,
    outputTokens: output,
    cachedInputTokens: cached,
    reasoningTokens: reasoning,
    model,
  });
}

/** Usage of an Anthropic Messages API response (the object, or its usage). */
export function fromAnthropic(response) {
  const { usage, model } = usageOf(response);
  return new TokenUsage({
    provider: "anthropic",
    inputTokens: count(usage, "input_tokens"),
    outputTokens: count(usage, "output_tokens"),
    cachedInputTokens: count(usage, "cache_read_input_tokens"),
    cacheWriteTokens: count(usage, "cache_creation_input_tokens"),
    model,
  });
}
