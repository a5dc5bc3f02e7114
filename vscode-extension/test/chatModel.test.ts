import { describe, expect, it } from 'vitest';
import {
  busy,
  chunkLabel,
  codeBlocks,
  emptyState,
  escapeHtml,
  makeNonce,
  messageForClick,
  reduce,
  renderAnswer,
  renderChunks,
  renderProse,
  renderState,
  splitBlocks,
  webviewHtml,
  type ChatState,
  type ToWebview,
} from '../src/webview/chatModel';

const run = (...messages: ToWebview[]): ChatState => messages.reduce(reduce, emptyState());
const chunk = { path: '/ws/geometry.py', startLine: 0, endLine: 2, source: 'selection' };

describe('reduce', () => {
  it('streams deltas into the current turn, then takes the final answer and chunks', () => {
    let state = run({ type: 'start', text: 'why?' }, { type: 'delta', delta: 'Because ' });
    expect(busy(state)).toBe(true);
    state = reduce(state, { type: 'delta', delta: 'math.' });
    expect(state.turns[0].answer).toBe('Because math.');
    state = reduce(state, { type: 'done', answer: 'Because math.', chunks: [chunk] });
    expect(state.turns[0]).toMatchObject({ state: 'done', chunks: [chunk] });
    expect(busy(state)).toBe(false);
  });

  it('ignores deltas after a stop and keeps the partial answer', () => {
    const state = run({ type: 'start', text: 'q' }, { type: 'delta', delta: 'part' }, { type: 'stopped' }, { type: 'delta', delta: 'late' }, { type: 'done', answer: 'x', chunks: [] });
    expect(state.turns[0]).toMatchObject({ answer: 'part', state: 'stopped' });
  });

  it('marks a failed turn, shows errors outside a turn as a notice, and resets', () => {
    let state = run({ type: 'start', text: 'q' }, { type: 'error', message: 'proxy down' });
    expect(state.turns[0]).toMatchObject({ state: 'error', error: 'proxy down' });
    state = reduce(state, { type: 'error', message: 'no server' });
    expect(state.notice).toBe('no server');
    expect(reduce(state, { type: 'reset' })).toEqual(emptyState());
  });

  it('does not mutate the previous state', () => {
    const before = run({ type: 'start', text: 'q' });
    const frozen = JSON.stringify(before);
    reduce(before, { type: 'delta', delta: 'more' });
    expect(JSON.stringify(before)).toBe(frozen);
  });
});

describe('markdown', () => {
  it('escapes everything: no HTML from the model reaches the DOM', () => {
    const html = renderAnswer('<img src=x onerror=alert(1)> **b** `<script>`\n\n```html\n<script>alert(1)</script>\n```', { actions: true });
    expect(html).not.toMatch(/<img|<script/);
    expect(html).toContain('&lt;img src=x onerror=alert(1)&gt;');
    expect(html).toContain('<strong>b</strong>');
    expect(html).toContain('<code>&lt;script&gt;</code>');
    expect(escapeHtml(`"'&`)).toBe('&quot;&#39;&amp;');
  });

  it('splits fenced code blocks, including one still open mid-stream', () => {
    const blocks = splitBlocks('Intro\n```py\nx = 1\n```\nafter\n```\nopen');
    expect(blocks.map((b) => b.kind)).toEqual(['text', 'code', 'text', 'code']);
    expect(blocks[3]).toEqual({ kind: 'code', lang: '', code: 'open', closed: false });
    expect(codeBlocks('a\n```\none\n```\nb\n~~~js\ntwo\n~~~')).toEqual(['one', 'two']);
  });

  it('gives closed code blocks Copy / Insert / Apply, and none while streaming', () => {
    const md = 'Use:\n```python\nprint(1)\n```\n';
    const done = renderAnswer(md, { actions: true });
    for (const action of ['copy', 'insert', 'apply']) expect(done).toContain(`data-action="${action}" data-block="0"`);
    expect(done).toContain('<span class="lang">python</span>');
    expect(renderAnswer(md, { actions: false })).not.toContain('data-action');
    expect(renderAnswer('```\nstill typing', { actions: true })).not.toContain('data-action');
  });

  it('renders headings, lists and paragraphs', () => {
    expect(renderProse('# Title\n- a\n- b\n\n1. one\n\ntext\nmore')).toBe(
      '<h3>Title</h3><ul><li>a</li><li>b</li></ul><ol><li>one</li></ol><p>text<br>more</p>',
    );
  });
});

describe('chunks and clicks', () => {
  it('labels chunks with 1-based lines and lists them as links', () => {
    expect(chunkLabel(chunk)).toBe('geometry.py:1-3');
    expect(chunkLabel({ ...chunk, endLine: 0 })).toBe('geometry.py:1');
    const html = renderChunks([chunk]);
    expect(html).toContain('data-chunk="0"');
    expect(html).toContain('geometry.py:1-3');
    expect(renderChunks([])).toBe('');
  });

  it('maps clicks to messages for the extension', () => {
    const state = run({ type: 'start', text: 'q' }, { type: 'done', answer: 'x\n```\ncode()\n```', chunks: [chunk] });
    expect(messageForClick(state, { turn: '0', action: 'apply', block: '0' })).toEqual({ type: 'apply', code: 'code()' });
    expect(messageForClick(state, { turn: '0', action: 'copy', block: '0' })).toEqual({ type: 'copy', code: 'code()' });
    expect(messageForClick(state, { turn: '0', chunk: '0' })).toEqual({ type: 'openChunk', chunk });
    expect(messageForClick(state, { turn: '0', action: 'apply', block: '5' })).toBeUndefined();
    expect(messageForClick(state, { turn: '3', chunk: '0' })).toBeUndefined();
  });

  it('renders the whole transcript with status lines', () => {
    const html = renderState(run({ type: 'start', text: 'q <b>', context: 'Context: a.py:1-2' }, { type: 'delta', delta: 'hi' }));
    expect(html).toContain('q &lt;b&gt;');
    expect(html).toContain('data-state="streaming"');
    expect(html).toContain('Thinking');
    expect(html).toContain('Context: a.py:1-2');
    expect(renderState(emptyState())).toContain('class="empty"');
  });
});

describe('webview HTML', () => {
  it('has a strict CSP: nothing remote, scripts only with the nonce', () => {
    const nonce = makeNonce();
    expect(nonce).toMatch(/^[A-Za-z0-9]{32}$/);
    const html = webviewHtml({ cspSource: 'vscode-webview://x', nonce, scriptUri: 'vscode-webview://x/w.js', styleUri: 'vscode-webview://x/c.css' });
    const csp = /content="([^"]+)"/.exec(html)![1];
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain(`script-src 'nonce-${nonce}'`);
    expect(csp).not.toMatch(/unsafe-inline|unsafe-eval|https?:|\*/);
    expect(html).toContain(`<script nonce="${nonce}" src="vscode-webview://x/w.js">`);
    expect(html.match(/<script/g)).toHaveLength(1);
  });
});
