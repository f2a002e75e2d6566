// Credits are the API's decimal strings (at most 6 fractional digits). They are shown and summed
// as strings and BigInt micro-credits, never through floating point.

const MICRO = 1000000n;
const DECIMAL = /^(-?)(\d+)(?:\.(\d{1,6}))?$/;

/** Micro-credits (BigInt) of a decimal string such as "-12.5". */
export function toMicro(text) {
  const m = DECIMAL.exec(String(text));
  if (!m) throw new Error(`not a credits amount: ${text}`);
  const micro = BigInt(m[2]) * MICRO + BigInt((m[3] || "").padEnd(6, "0"));
  return m[1] ? -micro : micro;
}

/** The shortest decimal string of micro-credits, as the API writes it. */
export function fromMicro(micro) {
  const sign = micro < 0n ? "-" : "";
  const abs = micro < 0n ? -micro : micro;
  const whole = abs / MICRO;
  const frac = (abs % MICRO).toString().padStart(6, "0").replace(/0+$/, "");
  return sign + whole.toString() + (frac ? "." + frac : "");
}

/** A credits string for people: thousands grouped, the fraction kept as the API gave it. */
export function credits(text) {
  if (text === null || text === undefined) return "—";
  const m = DECIMAL.exec(String(text));
  if (!m) return String(text);
  const grouped = m[2].replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return m[1] + grouped + (m[3] ? "." + m[3] : "");
}

/** Sum of credits strings, as a credits string. */
export function sum(texts) {
  let total = 0n;
  for (const t of texts) total += toMicro(t);
  return fromMicro(total);
}

/** Whole percent of `part` in `whole` (credits strings), or null when `whole` is 0 or absent. */
export function percent(part, whole) {
  if (whole === null || whole === undefined) return null;
  const w = toMicro(whole);
  if (w <= 0n) return null;
  return Number((toMicro(part) * 100n) / w);
}
