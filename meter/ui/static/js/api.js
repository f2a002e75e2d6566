// Calls to the meter API with the key the person signed in with (kept in sessionStorage only).

const KEY = "meter.key";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || [];
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY);
}

export function keep(key) {
  sessionStorage.setItem(KEY, key);
}

export function forget() {
  sessionStorage.clear();
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = body && body.error;
  if (error) return new ApiError(response.status, error.code, error.message, error.details);
  return new ApiError(response.status, "http_" + response.status, `HTTP ${response.status}`);
}

/** A JSON call; throws ApiError with the API's code and message on a non-2xx answer. */
export async function call(path, { method = "GET", body, key = storedKey() } = {}) {
  const headers = { authorization: `Bearer ${key}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  return response.json();
}

/** The raw bytes and file name of a download (the CSV export). */
export async function download(path) {
  const response = await fetch(path, {
    headers: { authorization: `Bearer ${storedKey()}` }, cache: "no-store",
  });
  if (!response.ok) throw await failure(response);
  const disposition = response.headers.get("content-disposition") || "";
  const m = /filename="([^"]+)"/.exec(disposition);
  return { blob: await response.blob(), name: m ? m[1] : "export.csv" };
}

/** The message to show next to a field: the API's own, with its details. */
export function explain(error) {
  if (!(error instanceof ApiError)) return String(error && error.message ? error.message : error);
  const details = error.details.map((d) => d.message ? `${d.loc || ""} ${d.message}`.trim() : "");
  return [error.message, ...details.filter(Boolean)].join(": ");
}
