// The console's one way to call the server: the key (if any) as a Bearer header, every error as a message.
// The key lives in this tab's sessionStorage only and never goes into a URL.

const KEY_SLOT = "agentic.console.key";
let lockedHandler = () => {};

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY_SLOT) || "";
}

export function storeKey(key) {
  if (key) sessionStorage.setItem(KEY_SLOT, key);
  else sessionStorage.removeItem(KEY_SLOT);
}

// Called when the server answers 401: the page locks itself until a valid key is given.
export function onLocked(handler) {
  lockedHandler = handler;
}

async function errorOf(response) {
  const fallback = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    const error = body && body.error;
    return new ApiError(response.status, (error && error.message) || fallback, error && error.code);
  } catch {
    return new ApiError(response.status, fallback);
  }
}

export async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = storedKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (response.ok) return response;
  const error = await errorOf(response);
  if (response.status === 401) lockedHandler();
  throw error;
}

export async function getJSON(path) {
  const response = await api(path);
  return response.json();
}
