// Small DOM helpers shared by the playground's modules. Model output and spec text are untrusted: they are
// only ever set with textContent or .value, never as HTML.
export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

export function showError(message) {
  const box = $("error");
  box.hidden = false;
  box.textContent = message;
}
