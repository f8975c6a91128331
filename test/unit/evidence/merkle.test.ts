// The Merkle tree must agree with RFC 9162/6962's reference tree heads, or a bundle root proves
// nothing to anyone using another implementation.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { inclusionProof, leafHash, merkleRoot, verifyInclusion } from '../../../src/evidence/merkle.ts';

const LEAVES = [
  '',
  '00',
  '10',
  '2021',
  '3031',
  '40414243',
  '5051525354555657',
  '606162636465666768696a6b6c6d6e6f',
].map((h) => Buffer.from(h, 'hex'));
const ROOTS = [
  'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
  '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d',
  'fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125',
  'aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77',
  'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
  '4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4',
  '76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef',
  'ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c',
  '5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328',
];

test('the root matches the RFC 6962 reference tree heads for sizes 0 to 8', () => {
  const hashes = LEAVES.map(leafHash);
  for (let n = 0; n <= 8; n++)
    assert.equal(merkleRoot(hashes.slice(0, n)).toString('hex'), ROOTS[n], `size ${n}`);
});

test('every leaf of every tree up to 37 leaves proves its inclusion, and a wrong leaf or root does not', () => {
  for (let size = 1; size <= 37; size++) {
    const hashes = Array.from({ length: size }, (_, i) => leafHash(Buffer.of(i, i * 7)));
    const root = merkleRoot(hashes);
    for (let i = 0; i < size; i++) {
      const proof = inclusionProof(i, hashes);
      assert.ok(verifyInclusion(i, size, hashes[i] as Buffer, proof, root), `leaf ${i} of ${size}`);
      assert.equal(verifyInclusion(i, size, leafHash(Buffer.of(255)), proof, root), false);
      if (size > 1)
        assert.equal(verifyInclusion((i + 1) % size, size, hashes[i] as Buffer, proof, root), false);
    }
  }
});
