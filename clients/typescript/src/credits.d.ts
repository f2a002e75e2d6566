/** Credits as the caller gives them: a decimal string ("12.5"), whole credits as a bigint, or a
 * number whose shortest decimal form has at most 6 fractional digits and 15 significant digits
 * (a safe integer when whole). Never a float computed on a money path. */
export type CreditsIn = string | bigint | number;

/** Credits as the API writes them: an exact decimal string with at most 6 fractional digits. */
export type CreditsText = string;

export declare const MAX_FRACTION_DIGITS: 6;

/** `value` as micro-credits. Throws `TypeError` for other types, `RangeError` for negatives,
 * non-finite or unsafe numbers and more than 6 fractional digits. */
export declare function microCredits(value: CreditsIn): bigint;

/** Micro-credits as the API's decimal string: "12.5", "3", "0.000001". */
export declare function formatMicro(micro: bigint): CreditsText;

/** `value` as the API's exact decimal string. */
export declare function creditsText(value: CreditsIn): CreditsText;
