// The page a reviewer reads: what it shows of a sealed bundle, that everything from the bundle
// is escaped (request text, reasons, tool names come from Matrix users and models), that it is
// one self-contained file that loads nothing, that it is the same page for the same input, and
// that a tampered, malformed or unreadable bundle still gets a page that says FAILED and why.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import fc from 'fast-check';
import { DomUtils, parseDocument } from 'htmlparser2';
import { ENTRY_TYPES, verifyBundle, type BundleVerification } from '../../../src/evidence/bundle.ts';
import { PAGE_CSP, renderBundlePage, verifyBundleText } from '../../../src/evidence/html.ts';
import {
  APPROVER,
  DENIAL_REASON,
  HOSTILE_TEXT,
  MALLORY,
  MALLORY_REASON,
  sealedFixture,
  type Fixture,
} from './page-fixture.ts';

let fixture: Fixture;
before(async () => {
  fixture = await sealedFixture();
});

const opts = {
  generatedAt: new Date('2026-12-02T08:00:00Z'),
  keys: { source: 'the test keys', kids: ['k1'] },
};

/** Text as a reader sees it: runs of white space are one space. */
const squash = (text: string): string => text.replace(/\s+/g, ' ').trim();

function dom(page: string) {
  const doc = parseDocument(page);
  const all = DomUtils.findAll(() => true, doc.children);
  return {
    text: squash(DomUtils.textContent(doc)),
    textOf: (id: string) => squash(DomUtils.textContent(all.find((e) => e.attribs['id'] === id) ?? [])),
    tags: (name: string) => all.filter((e) => e.name === name),
    byClass: (cls: string) => all.filter((e) => (e.attribs['class'] ?? '').split(' ').includes(cls)),
    byId: (id: string) => all.find((e) => e.attribs['id'] === id),
    all,
  };
}

async function pageOf(input: unknown): Promise<{ page: string; verification: BundleVerification }> {
  const verification = await verifyBundle(input, fixture.jwks);
  return { page: renderBundlePage(input, verification, opts), verification };
}

test('a verified bundle: the banner, the request and who asked, the approver, the steps, the outcome', async () => {
  const { page, verification } = await pageOf(fixture.bundle);
  assert.equal(verification.ok, true, JSON.stringify(verification.problems));
  const d = dom(page);
  assert.match(d.textOf('verdict'), /^VERIFIED/);
  assert.equal(d.textOf('outcome'), 'succeeded');
  assert.equal(d.textOf('requester'), '@alice:localhost');
  assert.equal(d.textOf('approvers'), APPROVER);
  assert.equal(DomUtils.textContent(d.byId('request-text') ?? []), HOSTILE_TEXT, 'the request text exactly');
  assert.ok(d.text.includes('Read the readme'), 'the plan');
  assert.ok(d.text.includes(fixture.digest), 'the digest');
  assert.ok(d.text.includes(`clawgate verify ${fixture.digest}.json`), 'how to verify it offline');
  assert.ok(d.text.includes('clawgate export clawsig') && d.text.includes('clawverify'));
  assert.ok(d.text.includes('"approver_user_ids_allowlist"'), 'the policy as JSON');
});

test('refusals are highlighted with their reasons: the non-approver, the denied step', async () => {
  const d = dom((await pageOf(fixture.bundle)).page);
  const refusals = d.byClass('refusal').map((e) => squash(DomUtils.textContent(e)));
  assert.ok(
    refusals.some(
      (t) => t.includes(MALLORY) && t.includes(MALLORY_REASON) && t.includes('APPROVAL_NOT_APPROVER'),
    ),
    `the refused approval: ${refusals.join(' | ')}`,
  );
  assert.ok(refusals.some((t) => t.includes(DENIAL_REASON) && t.includes('TOOL_DENIED_BY_POLICY')));
  const approval = dom((await pageOf(fixture.bundle)).page).byId('entry-5');
  assert.ok(
    approval && !(approval.attribs['class'] ?? '').includes('refusal'),
    'the counted approval is not a refusal',
  );
});

test('everything from the bundle is escaped: markup in the request, reasons and policy is text, not elements', async () => {
  const { page } = await pageOf(fixture.bundle);
  assert.ok(!page.includes('<script>alert(1)</script>'));
  assert.ok(!page.includes('<img src=x'));
  assert.ok(
    page.includes('&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&quot;alert(2)&quot;&gt;'),
  );
  const d = dom(page);
  assert.equal(d.tags('script').length, 0);
  assert.equal(d.tags('img').length, 0);
  assert.equal(d.tags('b').length, 0, 'the <b> of a reason stays text');
  assert.equal(d.tags('i').length, 0);
  assert.ok(
    d.all.every((e) => Object.keys(e.attribs).every((a) => !a.startsWith('on'))),
    'no event handler',
  );
});

test('one self-contained file: a strict CSP, no script, nothing loaded from anywhere', async () => {
  const { page } = await pageOf(fixture.bundle);
  const d = dom(page);
  const csp = d.tags('meta').find((m) => m.attribs['http-equiv'] === 'Content-Security-Policy');
  assert.equal(csp?.attribs['content'], PAGE_CSP);
  assert.match(PAGE_CSP, /default-src 'none'/);
  for (const tag of ['script', 'link', 'iframe', 'object', 'embed', 'img', 'form', 'base']) {
    assert.equal(d.tags(tag).length, 0, `no <${tag}>`);
  }
  assert.ok(d.all.every((e) => e.attribs['src'] === undefined));
  for (const a of d.tags('a')) assert.match(a.attribs['href'] ?? '', /^#entry-\d+$|^#refusals$/);
  assert.ok(!/url\(/.test(page), 'no url() in the styles');
});

test('the same bundle, verification and options make the same page', async () => {
  const first = await pageOf(fixture.bundle);
  const second = await pageOf(structuredClone(fixture.bundle));
  assert.equal(first.page, second.page);
});

test('a bundle with one entry changed: FAILED, the problem listed and the entry marked', async () => {
  const tampered = structuredClone(fixture.bundle);
  (tampered.entries[6] as { body: { tool: string } }).body.tool = 'search';
  const { page, verification } = await pageOf(tampered);
  assert.equal(verification.ok, false);
  const d = dom(page);
  assert.match(d.textOf('verdict'), /Verification FAILED/);
  assert.match(d.textOf('verdict'), /entry 6 \(tool_record\): its content differs from what was sealed/);
  const entry = d.byId('entry-6');
  assert.ok((entry?.attribs['class'] ?? '').includes('problem'));
  assert.match(d.text, /Does not verify: .*differs from what was sealed/);
});

test('what is not a bundle still gets a page that says FAILED and why, and never throws', async () => {
  for (const input of [null, 42, 'text', [], { format: 'something else' }, { entries: 'no' }]) {
    const { page, verification } = await pageOf(input);
    assert.equal(verification.ok, false);
    assert.match(page, /Verification FAILED/);
    assert.match(page, /<html lang="en">/);
  }
  const odd = {
    ...fixture.bundle,
    entries: [
      null,
      7,
      { type: 'model_turn', body: 'a string' },
      { type: 'tool_record', body: { denial: 'not an object', tool: { nested: true } } },
      { type: 'token', body: { purpose: 'execution', jwt: 'not.a.jwt' } },
      { type: 'model_receipt', body: { jws: '%%%.%%%.%%%' } },
      { type: 'a_new_kind', body: { '</pre><script>': '<script>' } },
    ],
  };
  const { page } = await pageOf(odd);
  assert.match(page, /An entry of type a_new_kind that this page does not know/);
  assert.ok(page.includes('&lt;/pre&gt;&lt;script&gt;'), 'an unknown entry is shown as escaped JSON');
  assert.equal(dom(page).tags('script').length, 0);
});

test('a file that is not JSON, or is stored under another digest, does not verify', async () => {
  const broken = await verifyBundleText('{"format": ', fixture.jwks);
  assert.equal(broken.verification.ok, false);
  assert.match(broken.verification.problems[0]?.problem ?? '', /not valid JSON/);
  assert.match(renderBundlePage(broken.input, broken.verification, opts), /Verification FAILED/);

  const renamed = await verifyBundleText(JSON.stringify(fixture.bundle), fixture.jwks, 'f'.repeat(64));
  assert.equal(renamed.verification.ok, false);
  assert.match(
    renamed.verification.problems.at(-1)?.problem ?? '',
    /stored as f{64}\.json, but the digest of what it holds is/,
  );

  const same = await verifyBundleText(JSON.stringify(fixture.bundle), fixture.jwks, fixture.digest);
  assert.equal(same.verification.ok, true);
});

test('whatever the entries hold, the page renders and no markup from them becomes an element', async () => {
  const hostile = fc.string({ maxLength: 12 }).map((s) => `${s}<x-evil onclick="1">${s}`);
  const value = fc.letrec((tie) => ({
    value: fc.oneof(
      { depthSize: 'small' },
      hostile,
      fc.integer(),
      fc.boolean(),
      fc.constant(null),
      fc.array(tie('value'), { maxLength: 4 }),
      fc.dictionary(
        fc.oneof(
          hostile,
          fc.constantFrom('text', 'sender', 'reason', 'tool', 'denial', 'status', 'phase', 'turn'),
        ),
        tie('value'),
        { maxKeys: 6 },
      ),
    ),
  })).value;
  const entry = fc.record({ type: fc.constantFrom(...ENTRY_TYPES, 'x<y'), body: value });
  await fc.assert(
    fc.asyncProperty(fc.array(entry, { maxLength: 8 }), async (entries) => {
      const input = { ...fixture.bundle, entries };
      const verification = await verifyBundle(input, fixture.jwks);
      const page = renderBundlePage(input, verification, opts);
      assert.ok(!page.includes('<x-evil'));
      assert.equal(dom(page).all.filter((e) => e.name === 'x-evil').length, 0);
    }),
    { numRuns: 150 },
  );
});
