// RFC 8785 canonical JSON on its known pitfalls, and the strict parsing in front of it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ERROR_CODES } from '../../../src/errors.ts';
import { canonicalHash, canonicalJson, parseStrict } from '../../../src/policy/canonical.ts';

test('NaN and Infinity have no canonical form and are refused', () => {
  for (const bad of [NaN, Infinity, -Infinity, { a: [1, NaN] }]) {
    assert.throws(() => canonicalJson(bad), { code: ERROR_CODES.jsonNotCanonicalizable });
  }
});

test('keys are ordered by UTF-16 code units, not by code points or locale', () => {
  // U+20AC (€) is one code unit 0x20AC; U+1F600 (😀) is the pair 0xD83D 0xDE00; U+FB01 is 0xFB01.
  // By code units: "a" < "é" (0xE9) < "€" < "😀" (0xD83D) < "ﬁ" (0xFB01); by code points 😀 would be last.
  const text = canonicalJson({ '\ufb01': 5, '\ud83d\ude00': 4, '€': 3, é: 2, a: 1 });
  assert.equal(text, '{"a":1,"é":2,"€":3,"😀":4,"ﬁ":5}');
});

test('a lone surrogate is refused', () => {
  assert.throws(() => canonicalJson({ s: '\ud800' }), { code: ERROR_CODES.jsonNotCanonicalizable });
  assert.throws(() => canonicalJson({ ['\udc00']: 1 }), { code: ERROR_CODES.jsonNotCanonicalizable });
});

test('-0 serialises as 0, and numbers take their shortest ECMAScript form', () => {
  assert.equal(canonicalJson({ z: -0 }), '{"z":0}');
  assert.equal(canonicalJson([1e21, 1e-7, 0.1 + 0.2, 100, 4.5]), '[1e+21,1e-7,0.30000000000000004,100,4.5]');
});

test('the hash does not depend on key order or whitespace', () => {
  assert.equal(
    canonicalHash(parseStrict('{"b": 1, "a": [1, 2]}', 'x')),
    canonicalHash(parseStrict('{"a":[1,2],"b":1}', 'x')),
  );
});

test('duplicate keys are refused in JSON and YAML, with the line', () => {
  assert.throws(() => parseStrict('{\n "a": 1,\n "a": 2\n}', 'policy'), {
    code: ERROR_CODES.jsonDuplicateKey,
    message: /policy at line 3, column 2: a key appears twice/,
  });
  assert.throws(() => parseStrict('a:\n  b: 1\n  b: 2\n', 'policy'), { code: ERROR_CODES.jsonDuplicateKey });
});

test('invalid JSON, NaN literals and numbers too large to be finite are refused with what was wrong', () => {
  assert.throws(() => parseStrict('{"a": NaN}', 'policy'), { code: ERROR_CODES.jsonInvalid });
  assert.throws(() => parseStrict('{"a": [1,]}', 'policy'), { code: ERROR_CODES.jsonInvalid });
  assert.throws(() => parseStrict('{"a": {"b": [1e400]}}', 'policy'), {
    code: ERROR_CODES.jsonNotCanonicalizable,
    message: /a\.b\[0\] is not a finite number/,
  });
  assert.throws(() => parseStrict('a: .inf\n', 'policy'), { code: ERROR_CODES.jsonNotCanonicalizable });
});
