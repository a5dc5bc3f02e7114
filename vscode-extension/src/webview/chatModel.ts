// The chat view's logic, free of VS Code and of the DOM: the messages between the extension and
// the webview, the conversation state, and a small, escaping markdown renderer. Unit-tested with
// vitest (test/chatModel.test.ts); the webview script (main.ts) only wires it to the DOM.

/** A cited chunk of the workspace, as `bastion/chat` returns it (lines 0-based, end inclusive). */
export interface Chunk {
  path: string;
  startLine: number;
  endLine: number;
  source: string;
}

/** Webview → extension. */
export type ToExtension =
  | { type: 'ready' }
  | { type: 'send'; text: string }
  | { type: 'stop' }
  | { type: 'newChat' }
  | { type: 'copy'; code: string }
  | { type: 'insert'; code: string }
  | { type: 'apply'; code: string }
  | { type: 'openChunk'; chunk: Chunk };

/** Extension → webview. */
export type ToWebview =
  | { type: 'start'; text: string; context?: string }
  | { type: 'delta'; delta: string }
  | { type: 'done'; answer: string; chunks: Chunk[] }
  | { type: 'error'; message: string }
  | { type: 'stopped' }
  | { type: 'reset' }
  | { type: 'notice'; text: string };

export interface Turn {
  question: string;
  context?: string;
  answer: string;
  chunks: Chunk[];
  state: 'streaming' | 'done' | 'stopped' | 'error';
  error?: string;
}

export interface ChatState {
  turns: Turn[];
  notice?: string;
}

export const emptyState = (): ChatState => ({ turns: [] });

export function busy(state: ChatState): boolean {
  const last = state.turns[state.turns.length - 1];
  return last !== undefined && last.state === 'streaming';
}

/** The next state after a message from the extension; never mutates `state`. */
export function reduce(state: ChatState, message: ToWebview): ChatState {
  const turns = state.turns.slice();
  const last = turns[turns.length - 1];
  const update = (changes: Partial<Turn>): ChatState => {
    if (last === undefined || last.state !== 'streaming') return state;
    turns[turns.length - 1] = { ...last, ...changes };
    return { ...state, turns };
  };
  switch (message.type) {
    case 'start':
      turns.push({ question: message.text, context: message.context, answer: '', chunks: [], state: 'streaming' });
      return { turns, notice: undefined };
    case 'delta':
      return last?.state === 'streaming' ? update({ answer: last.answer + message.delta }) : state;
    case 'done':
      // The final answer is authoritative: it holds every delta even if one was missed.
      return update({ answer: message.answer, chunks: message.chunks, state: 'done' });
    case 'stopped':
      return update({ state: 'stopped' });
    case 'error':
      if (last?.state === 'streaming') return update({ state: 'error', error: message.message });
      return { ...state, notice: message.message };
    case 'reset':
      return emptyState();
    case 'notice':
      return { ...state, notice: message.text };
  }
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** A parsed piece of markdown: prose, or a fenced code block (possibly still open). */
export type Block = { kind: 'text'; text: string } | { kind: 'code'; lang: string; code: string; closed: boolean };

/** Split markdown into prose and fenced code blocks; an unterminated fence (mid-stream) is open. */
export function splitBlocks(markdown: string): Block[] {
  const blocks: Block[] = [];
  const lines = markdown.split('\n');
  let prose: string[] = [];
  let code: string[] | null = null;
  let lang = '';
  let fence = '';
  const flushProse = () => {
    if (prose.join('\n').trim()) blocks.push({ kind: 'text', text: prose.join('\n') });
    prose = [];
  };
  for (const line of lines) {
    if (code === null) {
      const open = /^\s*(`{3,}|~{3,})\s*([\w+#.-]*)/.exec(line);
      if (open) {
        flushProse();
        code = [];
        fence = open[1];
        lang = open[2] ?? '';
      } else {
        prose.push(line);
      }
    } else if (line.trim().startsWith(fence) && line.trim().replace(/[`~]/g, '') === '') {
      blocks.push({ kind: 'code', lang, code: code.join('\n'), closed: true });
      code = null;
    } else {
      code.push(line);
    }
  }
  if (code !== null) blocks.push({ kind: 'code', lang, code: code.join('\n'), closed: false });
  flushProse();
  return blocks;
}

/** Inline markdown (code spans, bold, italics) on escaped text. */
export function renderInline(text: string): string {
  const parts = text.split(/(`[^`\n]+`)/);
  return parts
    .map((part) => {
      if (part.length > 2 && part.startsWith('`') && part.endsWith('`')) {
        return `<code>${escapeHtml(part.slice(1, -1))}</code>`;
      }
      return escapeHtml(part)
        .replace(/\*\*([^*\n]+)\*\*/g, '<strong>$1</strong>')
        .replace(/(^|[^*\w])\*([^*\n]+)\*(?=[^*\w]|$)/g, '$1<em>$2</em>')
        .replace(/(^|[^_\w])_([^_\n]+)_(?=[^_\w]|$)/g, '$1<em>$2</em>');
    })
    .join('');
}

/** Prose markdown: headings, lists, paragraphs. Everything is escaped; no raw HTML passes. */
export function renderProse(text: string): string {
  const out: string[] = [];
  let list: { tag: 'ul' | 'ol'; items: string[] } | null = null;
  let paragraph: string[] = [];
  const flushParagraph = () => {
    if (paragraph.length) out.push(`<p>${paragraph.map(renderInline).join('<br>')}</p>`);
    paragraph = [];
  };
  const flushList = () => {
    if (list) out.push(`<${list.tag}>${list.items.map((i) => `<li>${renderInline(i)}</li>`).join('')}</${list.tag}>`);
    list = null;
  };
  for (const line of text.split('\n')) {
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    const bullet = /^\s*[-*+]\s+(.*)$/.exec(line);
    const numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
    if (!line.trim()) {
      flushParagraph();
      flushList();
    } else if (heading) {
      flushParagraph();
      flushList();
      const level = Math.min(heading[1].length + 2, 6);
      out.push(`<h${level}>${renderInline(heading[2])}</h${level}>`);
    } else if (bullet || numbered) {
      flushParagraph();
      const tag = bullet ? 'ul' : 'ol';
      if (list && list.tag !== tag) flushList();
      list ??= { tag, items: [] };
      list.items.push((bullet ?? numbered)![1]);
    } else {
      flushList();
      paragraph.push(line);
    }
  }
  flushParagraph();
  flushList();
  return out.join('');
}

/**
 * An answer as HTML. Code blocks carry their index in `data-block`; `codeBlocks(answer)[i]` is the
 * code its Copy / Insert / Apply buttons act on (the HTML never round-trips code through the DOM).
 */
export function renderAnswer(markdown: string, options: { actions: boolean }): string {
  let index = 0;
  return splitBlocks(markdown)
    .map((block) => {
      if (block.kind === 'text') return renderProse(block.text);
      const i = index++;
      const label = block.lang ? `<span class="lang">${escapeHtml(block.lang)}</span>` : '';
      const buttons =
        options.actions && block.closed
          ? `<div class="code-actions">${label}` +
            `<button class="code-action" data-action="copy" data-block="${i}" title="Copy to the clipboard">Copy</button>` +
            `<button class="code-action" data-action="insert" data-block="${i}" title="Insert at the cursor">Insert</button>` +
            `<button class="code-action" data-action="apply" data-block="${i}" title="Replace the selection in the editor">Apply</button>` +
            `</div>`
          : label
            ? `<div class="code-actions">${label}</div>`
            : '';
      return `<div class="code-block" data-block="${i}">${buttons}<pre><code>${escapeHtml(block.code)}</code></pre></div>`;
    })
    .join('');
}

export function codeBlocks(markdown: string): string[] {
  return splitBlocks(markdown)
    .filter((b): b is Extract<Block, { kind: 'code' }> => b.kind === 'code')
    .map((b) => b.code);
}

/** The file name and 1-based line range people read, e.g. `util.py:3-9`. */
export function chunkLabel(chunk: Chunk): string {
  const name = chunk.path.split(/[\\/]/).pop() || chunk.path;
  const start = chunk.startLine + 1;
  const end = chunk.endLine + 1;
  return end > start ? `${name}:${start}-${end}` : `${name}:${start}`;
}

export function renderChunks(chunks: Chunk[]): string {
  if (!chunks.length) return '';
  const items = chunks
    .map(
      (c, i) =>
        `<li><a href="#" class="chunk" data-chunk="${i}" title="${escapeHtml(c.path)} (${escapeHtml(c.source)})">` +
        `${escapeHtml(chunkLabel(c))}</a> <span class="source">${escapeHtml(c.source)}</span></li>`,
    )
    .join('');
  return `<div class="chunks"><div class="chunks-title">Context</div><ul>${items}</ul></div>`;
}

export function renderTurn(turn: Turn, index: number): string {
  const context = turn.context ? `<div class="context">${escapeHtml(turn.context)}</div>` : '';
  const status =
    turn.state === 'streaming'
      ? '<div class="status streaming">Thinking…</div>'
      : turn.state === 'stopped'
        ? '<div class="status">Stopped.</div>'
        : turn.state === 'error'
          ? `<div class="status error" role="alert">${escapeHtml(turn.error ?? 'Failed')}</div>`
          : '';
  return (
    `<section class="turn" data-turn="${index}">` +
    `<div class="question">${escapeHtml(turn.question)}</div>${context}` +
    `<div class="answer" data-state="${turn.state}">${renderAnswer(turn.answer, { actions: turn.state !== 'streaming' })}</div>` +
    `${status}${renderChunks(turn.chunks)}</section>`
  );
}

export function renderState(state: ChatState): string {
  const notice = state.notice ? `<div class="notice" role="status">${escapeHtml(state.notice)}</div>` : '';
  if (!state.turns.length) {
    return `${notice}<div class="empty">Ask about your code. The selection in the editor, the open file and the symbols you name are sent as context, through your organisation's audit proxy.</div>`;
  }
  return notice + state.turns.map(renderTurn).join('');
}

/** What a click inside the transcript means, from the clicked element's data attributes. */
export function messageForClick(
  state: ChatState,
  data: { action?: string; block?: string; chunk?: string; turn?: string },
): ToExtension | undefined {
  const turn = state.turns[Number(data.turn)];
  if (!turn) return undefined;
  if (data.chunk !== undefined) {
    const chunk = turn.chunks[Number(data.chunk)];
    return chunk ? { type: 'openChunk', chunk } : undefined;
  }
  const code = codeBlocks(turn.answer)[Number(data.block)];
  if (code === undefined) return undefined;
  if (data.action === 'copy' || data.action === 'insert' || data.action === 'apply') {
    return { type: data.action, code };
  }
  return undefined;
}

/** A fresh nonce for the Content-Security-Policy (32 characters of [A-Za-z0-9]). */
export function makeNonce(random: () => number = Math.random): string {
  const chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  let nonce = '';
  for (let i = 0; i < 32; i++) nonce += chars.charAt(Math.floor(random() * chars.length));
  return nonce;
}

/** The webview's HTML shell: a strict CSP (no remote anything, scripts only with the nonce). */
export function webviewHtml(options: { cspSource: string; nonce: string; scriptUri: string; styleUri: string }): string {
  const { cspSource, nonce, scriptUri, styleUri } = options;
  const csp = [
    "default-src 'none'",
    `style-src ${cspSource}`,
    `font-src ${cspSource}`,
    `img-src ${cspSource} data:`,
    `script-src 'nonce-${nonce}'`,
    "connect-src 'none'",
    "frame-src 'none'",
    "form-action 'none'",
    "base-uri 'none'",
  ].join('; ');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${escapeHtml(styleUri)}">
<title>Bastion chat</title>
</head>
<body>
<main id="transcript" aria-live="polite"></main>
<form id="composer">
<textarea id="input" rows="3" placeholder="Ask Bastion… (Enter sends, Shift+Enter for a new line)" aria-label="Message"></textarea>
<div class="buttons">
<button type="submit" id="send">Send</button>
<button type="button" id="stop" disabled>Stop</button>
<button type="button" id="new" class="secondary">New chat</button>
</div>
</form>
<script nonce="${nonce}" src="${escapeHtml(scriptUri)}"></script>
</body>
</html>`;
}
