// What a Matrix client shows for a message: the text of its HTML `formatted_body` as a client
// renders it (tags removed, entities decoded, the reply fallback `<mx-reply>` dropped), and
// the markup in it that hides, strikes out, folds or sets apart part of that text. A command
// counts only when what the room shows says the same thing as the plain `body` clawgate reads.
// Parsed with htmlparser2, the parser the sanitizers Matrix clients use are built on, so a
// malformed tag is read the way a client reads it.
import { Parser } from 'htmlparser2';

export const MATRIX_HTML_FORMAT = 'org.matrix.custom.html';

export interface ShownHtml {
  /** The text a reader sees, one line per block, whitespace as a browser collapses it. */
  text: string;
  /** Each kind of markup present that keeps part of the text from reading as written. */
  concealing: string[];
}

/** The tags the Matrix spec lets clients render; a client drops or escapes any other. */
const MATRIX_TAGS = new Set(
  (
    'font del h1 h2 h3 h4 h5 h6 blockquote p a ul ol sup sub li b i u strong em s strike code hr br ' +
    'div table thead tbody tr th td caption pre span img details summary mx-reply'
  ).split(' '),
);

/** Tags a client shows on lines of their own. */
const BLOCK_TAGS = new Set(
  'p div br hr li ul ol pre blockquote table tr caption details summary h1 h2 h3 h4 h5 h6'.split(' '),
);

/** Markup that changes how its text reads: what it does, said to the sender. */
const CONCEALING_TAGS: Record<string, string> = {
  del: 'struck-out text',
  s: 'struck-out text',
  strike: 'struck-out text',
  details: 'a folded section',
  summary: 'a folded section',
  blockquote: 'a quotation',
  img: 'an image',
};

const CONCEALING_ATTRIBUTES: Record<string, string> = {
  'data-mx-spoiler': 'a spoiler (hidden text)',
  'data-mx-color': 'coloured text (it can be made invisible)',
  'data-mx-bg-color': 'coloured text (it can be made invisible)',
  color: 'coloured text (it can be made invisible)',
  style: 'styled text (it can be made invisible)',
};

/** Whether a link is a Matrix pill (a mention), which a client shows by its text alone. */
function isPill(href: string): boolean {
  return /^https:\/\/matrix\.to\/#\//i.test(href) || /^matrix:/i.test(href);
}

export function shownHtml(html: string): ShownHtml {
  const concealing = new Set<string>();
  const out: string[] = [];
  // Depth inside <mx-reply> (dropped by clients) and inside elements whose text is not shown.
  let hiddenDepth = 0;
  const links: Array<{ href: string; start: number }> = [];
  const parser = new Parser(
    {
      onopentag(name, attributes) {
        if (hiddenDepth > 0) {
          hiddenDepth += 1;
          return;
        }
        // The reply fallback is dropped by clients; a script or style is never shown as text.
        if (name === 'mx-reply' || name === 'script' || name === 'style') {
          hiddenDepth = 1;
          if (name !== 'mx-reply') concealing.add(`markup clients do not show (<${name}>)`);
          return;
        }
        if (!MATRIX_TAGS.has(name)) concealing.add(`markup clients do not show as written (<${name}>)`);
        const tagNote = CONCEALING_TAGS[name];
        if (tagNote) concealing.add(`${tagNote} (<${name}>)`);
        for (const attribute of Object.keys(attributes)) {
          const note = CONCEALING_ATTRIBUTES[attribute];
          if (note) concealing.add(`${note} (${attribute})`);
        }
        if (BLOCK_TAGS.has(name)) out.push('\n');
        if (name === 'a') links.push({ href: attributes['href'] ?? '', start: out.join('').length });
      },
      ontext(text) {
        if (hiddenDepth === 0) out.push(text);
      },
      onclosetag(name) {
        if (hiddenDepth > 0) {
          hiddenDepth -= 1;
          return;
        }
        if (BLOCK_TAGS.has(name)) out.push('\n');
        if (name === 'a') {
          const link = links.pop();
          if (!link || link.href === '' || isPill(link.href)) return;
          // A link whose text is not its address shows the address too, as markdown's body does.
          const text = out.join('').slice(link.start).trim();
          if (text !== link.href) out.push(` (${link.href})`);
        }
      },
    },
    { decodeEntities: true, lowerCaseTags: true, lowerCaseAttributeNames: true },
  );
  parser.write(html);
  parser.end();
  const text = out
    .join('')
    .split('\n')
    .map((line) => line.replace(/[ \t\r\f\v]+/g, ' ').trim())
    .filter((line) => line !== '')
    .join('\n');
  return { text, concealing: [...concealing] };
}

/** Format characters that reorder or hide text on screen (bidirectional controls). */
export const BIDI_CONTROLS = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/u;

/**
 * Two texts say the same words: compared on letters and digits only (after NFKC), so the
 * markdown of a body (`**bold**`, backticks, a link's brackets) matches the HTML it renders to.
 */
export function sameWords(a: string, b: string): boolean {
  const words = (s: string) =>
    s
      .normalize('NFKC')
      .toLowerCase()
      .replace(/[^\p{L}\p{N}]+/gu, '');
  return words(a) === words(b);
}

/** A text cut to `max` characters for a reply, with "..." where it was cut. */
export function clip(text: string, max = 80): string {
  return text.length > max ? `${text.slice(0, max - 3)}...` : text;
}
