// The hand-written declarations name what the modules export, no more and no less.

import test from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";

function declared(file) {
  const text = fs.readFileSync(new URL(`../src/${file}`, import.meta.url), "utf8");
  const names = new Set();
  for (const [, list] of text.matchAll(/^export \{([^}]*)\}/gm)) {
    for (const name of list.split(",")) if (name.trim()) names.add(name.trim());
  }
  for (const [, name] of text.matchAll(/^export declare (?:class|function|const) (\w+)/gm)) {
    names.add(name);
  }
  return [...names].sort();
}

for (const module of ["index", "file-spool", "client", "credits", "errors", "usage"]) {
  test(`${module}.d.ts declares what ${module}.js exports`, async () => {
    const exported = Object.keys(await import(`../src/${module}.js`)).sort();
    const names = declared(`${module}.d.ts`);
    assert.deepEqual(exported.filter((n) => !names.includes(n)), [], "exported, not declared");
    assert.deepEqual(names.filter((n) => !exported.includes(n)), [], "declared, not exported");
  });
}
