// Exact credits and the usage helpers: no meter needed.

import test from "node:test";
import assert from "node:assert/strict";
import { creditsText, microCredits, fromAnthropic, fromOpenAI, usageEvent } from "../src/index.js";
import { PRICES } from "./support.js";

test("credits are exact decimal strings", () => {
  assert.equal(creditsText("12.50"), "12.5");
  assert.equal(creditsText(3), "3");
  assert.equal(creditsText(12.5), "12.5");
  assert.equal(creditsText(0.1), "0.1");
  assert.equal(creditsText(3n), "3");
  assert.equal(creditsText("0.000001"), "0.000001");
  assert.equal(creditsText("1E+3"), "1000");
  assert.equal(creditsText("9007199254.740991"), "9007199254.740991");
  assert.equal(microCredits("9007199254.740991"), 9007199254740991n);
  for (const bad of ["0.0000001", "-1", "NaN", "Infinity", "abc", "", 1e-7, -0.5, 0.1 + 0.2]) {
    assert.throws(() => creditsText(bad), RangeError, String(bad));
  }
  // Unsafe integers and numbers with more digits than a float keeps are refused: a string or
  // a bigint says exactly what is meant.
  assert.throws(() => creditsText(2 ** 53), RangeError);
  assert.throws(() => creditsText(9007199254.740991), RangeError);
  for (const wrong of [null, undefined, {}, true]) assert.throws(() => creditsText(wrong), TypeError);
});

test("events carry credits as strings and keep a given id", () => {
  const event = usageEvent({
    orgId: "acme",
    memberId: "ada",
    credits: 0.25,
    source: "//test",
    eventId: "e-1",
    reservationId: "r-1",
    attributes: { model: "large" },
    time: new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 6)),
  });
  assert.deepEqual(event.data, {
    org_id: "acme",
    member_id: "ada",
    credits: "0.25",
    reservation_id: "r-1",
    attributes: { model: "large" },
  });
  assert.equal(event.id, "e-1");
  assert.equal(event.time, "2026-01-02T03:04:05.006Z");
  assert.match(usageEvent({ orgId: "a", memberId: "b", credits: "1", source: "s" }).id, /^[0-9a-f]{32}$/);
});

// The same recorded provider answers and prices as the Python client's tests.
const CHAT_COMPLETION = {
  model: "gpt-4o-2024-08-06",
  usage: {
    prompt_tokens: 1200,
    completion_tokens: 300,
    total_tokens: 1500,
    prompt_tokens_details: { cached_tokens: 1000, audio_tokens: 0 },
    completion_tokens_details: { reasoning_tokens: 120, audio_tokens: 0 },
  },
};
const RESPONSE = {
  model: "o4-mini",
  usage: {
    input_tokens: 500,
    input_tokens_details: { cached_tokens: 0 },
    output_tokens: 80,
    output_tokens_details: { reasoning_tokens: 64 },
    total_tokens: 580,
  },
};
const MESSAGE = {
  model: "claude-sonnet-4-5",
  usage: {
    input_tokens: 40,
    cache_creation_input_tokens: 2000,
    cache_read_input_tokens: 6000,
    output_tokens: 512,
  },
};

test("OpenAI chat completion usage", () => {
  const usage = fromOpenAI(CHAT_COMPLETION);
  assert.deepEqual([usage.inputTokens, usage.cachedInputTokens, usage.outputTokens], [200, 1000, 300]);
  assert.equal(usage.reasoningTokens, 120);
  assert.equal(usage.totalTokens, 1500);
  assert.equal(usage.credits(PRICES), "0.00475"); // 200*2.5 + 1000*1.25 + 300*10 per million
  assert.equal(fromOpenAI(CHAT_COMPLETION.usage).credits(PRICES), "0.00475");
  assert.deepEqual(usage.attributes(), {
    provider: "openai",
    input_tokens: 200,
    output_tokens: 300,
    cached_input_tokens: 1000,
    cache_write_tokens: 0,
    reasoning_tokens: 120,
    model: "gpt-4o-2024-08-06",
  });
});

test("OpenAI Responses API usage", () => {
  const usage = fromOpenAI(RESPONSE);
  assert.deepEqual([usage.inputTokens, usage.outputTokens, usage.reasoningTokens], [500, 80, 64]);
  assert.equal(usage.credits(PRICES), "0.00205");
});

test("Anthropic message usage, rounded up to the micro-credit", () => {
  const usage = fromAnthropic(MESSAGE);
  assert.equal(usage.inputTokens, 40);
  assert.equal(usage.cachedInputTokens, 6000);
  assert.equal(usage.cacheWriteTokens, 2000);
  assert.equal(usage.totalTokens, 8552);
  assert.equal(usage.credits(PRICES), "0.01897");
  const one = fromAnthropic({ input_tokens: 1, output_tokens: 0 });
  assert.equal(one.credits({ input: "0.1", output: "0" }), "0.000001");
  assert.throws(() => fromAnthropic(null), TypeError);
});
