// The chat view: a sidebar webview talking to `bastion/chat` (streamed as `bastion/chatDelta`).
import * as path from 'node:path';
import * as vscode from 'vscode';
import { CancellationTokenSource } from 'vscode-languageclient/node';
import type { LanguageClient } from 'vscode-languageclient/node';
import { chunkLabel, makeNonce, webviewHtml, type Chunk, type ToExtension, type ToWebview } from './webview/chatModel';

interface Host {
  ready(): Promise<LanguageClient | undefined>;
  readonly output: vscode.LogOutputChannel;
}

interface LspSelection {
  start: { line: number; character: number };
  end: { line: number; character: number };
}

interface ChatResult {
  sessionId: string;
  answer: string;
  chunks: Chunk[];
}

export class ChatViewProvider implements vscode.WebviewViewProvider {
  static readonly viewType = 'bastion.chatView';
  private view: vscode.WebviewView | undefined;
  private webviewReady = false;
  private queue: ToWebview[] = [];
  private waiters: (() => void)[] = [];
  private sessionId: string | undefined;
  private running: { cts: CancellationTokenSource; sessionId: string | undefined } | undefined;
  private lastEditor: vscode.TextEditor | undefined;

  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly host: Host,
  ) {}

  trackEditor(editor: vscode.TextEditor | undefined): void {
    if (editor && (editor.document.uri.scheme === 'file' || editor.document.uri.scheme === 'untitled')) this.lastEditor = editor;
  }

  /** The editor chat actions refer to: the active one, else the last one that had focus. */
  private editor(): vscode.TextEditor | undefined {
    const active = vscode.window.activeTextEditor;
    if (active) return active;
    if (this.lastEditor && vscode.window.visibleTextEditors.includes(this.lastEditor)) return this.lastEditor;
    return this.lastEditor;
  }

  resolveWebviewView(view: vscode.WebviewView): void {
    this.view = view;
    this.webviewReady = false;
    const media = vscode.Uri.joinPath(this.extensionUri, 'media');
    const dist = vscode.Uri.joinPath(this.extensionUri, 'dist');
    view.webview.options = { enableScripts: true, localResourceRoots: [media, dist] };
    view.webview.html = webviewHtml({
      cspSource: view.webview.cspSource,
      nonce: makeNonce(),
      scriptUri: view.webview.asWebviewUri(vscode.Uri.joinPath(dist, 'webview.js')).toString(),
      styleUri: view.webview.asWebviewUri(vscode.Uri.joinPath(media, 'chat.css')).toString(),
    });
    view.webview.onDidReceiveMessage((message: ToExtension) => void this.onMessage(message));
    view.onDidDispose(() => {
      this.view = undefined;
      this.webviewReady = false;
    });
  }

  private post(message: ToWebview): void {
    if (this.view && this.webviewReady) void this.view.webview.postMessage(message);
    else this.queue.push(message);
  }

  private async reveal(): Promise<void> {
    if (this.view && this.webviewReady) {
      this.view.show(true);
      return;
    }
    const ready = new Promise<void>((resolve) => this.waiters.push(resolve));
    await vscode.commands.executeCommand(`${ChatViewProvider.viewType}.focus`);
    await Promise.race([ready, new Promise((resolve) => setTimeout(resolve, 5000))]);
  }

  private async onMessage(message: ToExtension): Promise<void> {
    switch (message.type) {
      case 'ready': {
        this.webviewReady = true;
        for (const queued of this.queue.splice(0)) void this.view?.webview.postMessage(queued);
        for (const resolve of this.waiters.splice(0)) resolve();
        return;
      }
      case 'send': {
        const editor = this.editor();
        const context = editor ? this.contextOf(editor) : {};
        await this.ask(message.text, context);
        return;
      }
      case 'stop':
        return this.stop();
      case 'newChat':
        return this.newChat();
      case 'copy':
        await vscode.env.clipboard.writeText(message.code);
        return;
      case 'insert':
        return this.insert(message.code);
      case 'apply':
        return this.apply(message.code);
      case 'openChunk':
        return this.openChunk(message.chunk);
    }
  }

  private contextOf(editor: vscode.TextEditor): { uri: string; selection?: LspSelection } {
    const s = editor.selection;
    const uri = editor.document.uri.toString();
    if (s.isEmpty) return { uri };
    return { uri, selection: { start: { line: s.start.line, character: s.start.character }, end: { line: s.end.line, character: s.end.character } } };
  }

  /** One chat turn: show it, stream its deltas, then list the cited chunks. */
  async ask(text: string, context: { uri?: string; selection?: unknown }): Promise<ChatResult | undefined> {
    await this.reveal();
    if (this.running) {
      this.post({ type: 'notice', text: 'An answer is still streaming: Stop it first.' });
      return undefined;
    }
    const client = await this.host.ready();
    if (!client) {
      this.post({ type: 'notice', text: 'The Bastion language server is not running; see the Bastion log.' });
      return undefined;
    }
    const where = context.uri ? this.describeContext(context.uri, context.selection as LspSelection | undefined) : undefined;
    this.post({ type: 'start', text, context: where });
    const cts = new CancellationTokenSource();
    const run = (this.running = { cts, sessionId: this.sessionId });
    const params: Record<string, unknown> = { message: text };
    if (this.sessionId) params.sessionId = this.sessionId;
    if (context.uri) params.uri = context.uri;
    if (context.selection) params.selection = context.selection;
    try {
      const result = await client.sendRequest<ChatResult>('bastion/chat', params, cts.token);
      if (this.running !== run) return undefined; // stopped or reset meanwhile
      this.sessionId = result.sessionId;
      this.post({ type: 'done', answer: result.answer, chunks: result.chunks ?? [] });
      return result;
    } catch (error) {
      if (this.running === run && !cts.token.isCancellationRequested) {
        const message = error instanceof Error ? error.message : String(error);
        this.host.output.warn(`chat: ${message}`);
        this.post({ type: 'error', message: `Bastion: ${message}` });
      }
      return undefined;
    } finally {
      if (this.running === run) this.running = undefined;
      cts.dispose();
    }
  }

  onDelta(params: { sessionId: string; delta: string }): void {
    const run = this.running;
    if (!run) return;
    // The first turn of a chat learns its session id from its first delta.
    if (run.sessionId === undefined) run.sessionId = params.sessionId;
    if (params.sessionId === run.sessionId) this.post({ type: 'delta', delta: params.delta });
  }

  stop(): void {
    const run = this.running;
    if (!run) return;
    this.running = undefined;
    run.cts.cancel(); // sends $/cancelRequest
    if (run.sessionId) this.sessionId = run.sessionId;
    this.post({ type: 'stopped' });
  }

  newChat(): void {
    this.stop();
    this.sessionId = undefined;
    this.post({ type: 'reset' });
  }

  private describeContext(uri: string, selection: LspSelection | undefined): string {
    const name = path.basename(vscode.Uri.parse(uri).path);
    if (!selection) return `Context: ${name}`;
    const start = selection.start.line + 1;
    const end = selection.end.character === 0 && selection.end.line > selection.start.line ? selection.end.line : selection.end.line + 1;
    return `Context: ${name}:${start}${end > start ? `-${end}` : ''}`;
  }

  private async insert(code: string): Promise<void> {
    const editor = this.editor();
    if (!editor) {
      void vscode.window.showInformationMessage('Bastion: open a file to insert into.');
      return;
    }
    await vscode.window.showTextDocument(editor.document, editor.viewColumn);
    const position = editor.selection.active;
    await editor.edit((builder) => builder.insert(position, code));
  }

  private async apply(code: string): Promise<void> {
    const editor = this.editor();
    if (!editor) {
      void vscode.window.showInformationMessage('Bastion: open the file to apply the code to.');
      return;
    }
    const client = await this.host.ready();
    if (!client) return;
    const document = editor.document;
    const s = editor.selection;
    try {
      const result = await client.sendRequest<{ applied: boolean; failureReason?: string }>('bastion/applyCodeBlock', {
        uri: client.code2ProtocolConverter.asUri(document.uri),
        version: document.version,
        code,
        selection: { start: { line: s.start.line, character: s.start.character }, end: { line: s.end.line, character: s.end.character } },
      });
      if (!result.applied) {
        void vscode.window.showWarningMessage(`Bastion: the code block was not applied${result.failureReason ? `: ${result.failureReason}` : ''}.`);
      }
    } catch (error) {
      void vscode.window.showWarningMessage(`Bastion: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  private async openChunk(chunk: Chunk): Promise<void> {
    const folder = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
    const file = path.isAbsolute(chunk.path) || !folder ? chunk.path : path.join(folder, chunk.path);
    try {
      const document = await vscode.workspace.openTextDocument(vscode.Uri.file(file));
      const end = Math.min(chunk.endLine, document.lineCount - 1);
      const range = new vscode.Range(chunk.startLine, 0, end, document.lineAt(end).text.length);
      await vscode.window.showTextDocument(document, { selection: range, preview: true, viewColumn: vscode.ViewColumn.One });
    } catch (error) {
      void vscode.window.showWarningMessage(`Bastion: cannot open ${chunkLabel(chunk)}: ${String(error)}`);
    }
  }
}
