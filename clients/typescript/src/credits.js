// Credits as exact decimal strings: the API's unit is the micro-credit (6 fractional digits),
// and no credits value of this client ever passes through a float.

export const MAX_FRACTION_DIGITS = 6;
const MICRO_PER_CREDIT = 1_000_000n;
const DECIMAL = /^\+?(\d+)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$|^\+?\.(\d+)(?:[eE]([+-]?\d+))?$/;

/**
 * `value` as micro-credits (a bigint). Takes a decimal string ("12.5", "1e3"), a bigint (whole
 * credits) or a number whose shortest decimal form has at most 6 fractional digits and that is
 * within the safe integer range. Throws `TypeError` for other types, `RangeError` for
 * negatives, non-finite numbers, unsafe integers and more than 6 fractional digits.
 */
export function microCredits(value) {
  if (typeof value === "bigint") {
    if (value < 0n) throw new RangeError(`credits ${value} is negative`);
    return value * MICRO_PER_CREDIT;
  }
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new RangeError(`credits ${value} is not finite`);
    if (value < 0) throw new RangeError(`credits ${value} is negative`);
    if (Number.isInteger(value)) {
      if (!Number.isSafeInteger(value)) {
        throw new RangeError(`credits ${value} is not a safe integer: pass a string or bigint`);
      }
      return BigInt(value) * MICRO_PER_CREDIT;
    }
    // The shortest text that reads back as this number is the literal the caller wrote only
    // when that literal had at most 15 significant digits; beyond, ask for a string.
    const text = String(value);
    if (text.replace(/e.*$/, "").replace(/\D/g, "").replace(/^0+/, "").length > 15) {
      throw new RangeError(`credits ${value} has too many digits for a number: pass a string`);
    }
    return parseDecimal(text, value);
  }
  if (typeof value === "string") return parseDecimal(value.trim(), value);
  throw new TypeError(`credits must be a string, bigint or number, not ${typeof value}`);
}

function parseDecimal(text, original) {
  const m = DECIMAL.exec(text);
  if (m === null) {
    if (text.startsWith("-")) throw new RangeError(`credits ${JSON.stringify(original)} is negative`);
    throw new RangeError(`credits ${JSON.stringify(original)} is not a decimal number`);
  }
  const whole = m[1] ?? "";
  const fraction = m[1] !== undefined ? (m[2] ?? "") : m[4];
  const exponent = Number(m[1] !== undefined ? (m[3] ?? "0") : (m[5] ?? "0"));
  let digits = (whole + fraction).replace(/^0+(?=\d)/, "");
  let scale = fraction.length - exponent; // value = digits * 10 ** -scale
  while (scale > MAX_FRACTION_DIGITS && digits.endsWith("0") && digits.length > 0) {
    digits = digits.slice(0, -1) || "0";
    scale -= 1;
  }
  if (/^0*$/.test(digits)) return 0n;
  if (scale > MAX_FRACTION_DIGITS) {
    throw new RangeError(
      `credits ${JSON.stringify(original)} has more than ${MAX_FRACTION_DIGITS} fractional digits`,
    );
  }
  if (Math.abs(scale) > 400) {
    throw new RangeError(`credits ${JSON.stringify(original)} is too large`);
  }
  const shift = MAX_FRACTION_DIGITS - scale;
  return BigInt(digits) * 10n ** BigInt(shift);
}

/** Micro-credits (a bigint) as the API's decimal string: "12.5", "3", "0.000001". */
export function formatMicro(micro) {
  if (typeof micro !== "bigint") throw new TypeError("micro-credits must be a bigint");
  const sign = micro < 0n ? "-" : "";
  const abs = micro < 0n ? -micro : micro;
  const whole = abs / MICRO_PER_CREDIT;
  const fraction = (abs % MICRO_PER_CREDIT).toString().padStart(6, "0").replace(/0+$/, "");
  return fraction ? `${sign}${whole}.${fraction}` : `${sign}${whole}`;
}

/** `value` as the API's exact decimal string (see `microCredits` for what is accepted). */
export function creditsText(value) {
  return formatMicro(microCredits(value));
}
