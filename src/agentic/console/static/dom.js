// Small helpers: build elements from data without innerHTML, and format numbers for people.

export const byId = (id) => document.getElementById(id);

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function number(value, digits = 0) {
  if (value === undefined || value === null || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function mebibytes(value) {
  if (value === undefined || value === null) return "unknown";
  return value >= 1024 ? `${number(value / 1024, 2)} GiB` : `${number(value, 0)} MiB`;
}

export function bytes(value) {
  if (value >= 2 ** 20) return `${number(value / 2 ** 20, 1)} MiB`;
  if (value >= 1024) return `${number(value / 1024, 0)} KiB`;
  return `${value} bytes`;
}

export function seconds(value) {
  if (value === undefined || value === null) return "–";
  return value < 1 ? `${number(value * 1000, 0)} ms` : `${number(value, 2)} s`;
}
