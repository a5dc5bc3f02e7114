// Bastion for VS Code: starts `bastion lsp`, shows its status, adds commands and the chat view.
import * as vscode from 'vscode';
import {
  CloseAction,
  CodeActionRequest,
  CodeActionResolveRequest,
  DidChangeConfigurationNotification,
  ErrorAction,
  LanguageClient,
  type LanguageClientOptions,
  type ServerOptions,
  State,
  type CodeAction as LspCodeAction,
  type Command as LspCommand,
} from 'vscode-languageclient/node';
import { findServer, newStatusError, SETUP_HINT, serverSettings, statusFace, type ServerStatus } from './config';
import { ChatViewProvider } from './chatView';

const KEY_SECRET = 'bastion.apiKey';

export class Bastion implements vscode.Disposable {
  readonly output = vscode.window.createOutputChannel('Bastion', { log: true });
  private readonly statusItem = vscode.window.createStatusBarItem('bastion.status', vscode.StatusBarAlignment.Right, 100);
  client: LanguageClient | undefined;
  private status: ServerStatus | undefined;
  private state: 'starting' | 'running' | 'stopped' | 'failed' = 'stopped';
  private hasKey = false;
  private starting: Promise<void> | undefined;
  private readonly clientListeners: vscode.Disposable[] = [];
  readonly chat: ChatViewProvider;

  constructor(private readonly context: vscode.ExtensionContext) {
    this.statusItem.name = 'Bastion';
    this.statusItem.command = 'bastion.showLog';
    this.statusItem.show();
    this.chat = new ChatViewProvider(context.extensionUri, this);
    this.render();
  }

  config(): vscode.WorkspaceConfiguration {
    return vscode.workspace.getConfiguration('bastion');
  }

  inlineEnabled(): boolean {
    return this.config().get<boolean>('inlineCompletions.enabled') ?? true;
  }

  render(): void {
    const face = statusFace(this.status, { hasKey: this.hasKey, inline: this.inlineEnabled(), state: this.state });
    this.statusItem.text = face.text;
    this.statusItem.tooltip = face.tooltip;
    this.statusItem.backgroundColor = face.error ? new vscode.ThemeColor('statusBarItem.errorBackground') : undefined;
  }

  /** The running client, or a message saying why there is none. */
  async ready(): Promise<LanguageClient | undefined> {
    if (this.starting) await this.starting;
    if (this.client?.state === State.Running) return this.client;
    void vscode.window.showWarningMessage('Bastion: the language server is not running. See the Bastion log.', 'Show Log').then((pick) => {
      if (pick) this.output.show();
    });
    return undefined;
  }

  async start(): Promise<void> {
    if (!this.starting) {
      this.starting = this.doStart().finally(() => (this.starting = undefined));
    }
    return this.starting;
  }

  private async doStart(): Promise<void> {
    const folders = (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath);
    const location = findServer(this.config().get<string>('serverPath'), folders, process.env.PATH);
    if (!location.found) {
      this.state = 'failed';
      this.render();
      this.output.error(location.message);
      this.offerHelp(location.message);
      return;
    }
    const key = (await this.context.secrets.get(KEY_SECRET)) || process.env.BASTION_API_KEY || '';
    this.hasKey = key.length > 0;
    const env: NodeJS.ProcessEnv = { ...process.env, PYTHONUNBUFFERED: '1' };
    if (key) env.BASTION_API_KEY = key;
    const serverOptions: ServerOptions = {
      command: location.command,
      args: ['lsp'],
      options: { env, cwd: folders[0] },
    };
    let initialized = false;
    const clientOptions: LanguageClientOptions = {
      documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
      initializationOptions: serverSettings(this.config()),
      outputChannel: this.output,
      initializationFailedHandler: (error) => {
        this.output.error(`initialize failed: ${String(error)}`);
        return false;
      },
      errorHandler: {
        error: () => ({ action: ErrorAction.Continue, handled: true }),
        closed: () => {
          if (!initialized) return { action: CloseAction.DoNotRestart, handled: true };
          this.state = 'starting';
          this.render();
          return { action: CloseAction.Restart, message: 'Bastion: the language server stopped; restarting it.' };
        },
      },
      middleware: {
        // The server's Explain action is a `bastion.chat` command: show it in the chat view.
        executeCommand: async (command, args, next) => {
          if (command === 'bastion.chat' && args[0] && typeof args[0] === 'object') {
            const { message, uri, selection } = args[0] as { message: string; uri?: string; selection?: unknown };
            return this.chat.ask(message, { uri, selection });
          }
          return next(command, args);
        },
      },
    };
    this.disposeClient();
    const client = new LanguageClient('bastion', 'Bastion', serverOptions, clientOptions);
    this.clientListeners.push(
      client.onNotification('bastion/status', (status: ServerStatus) => {
        const error = newStatusError(this.status, status);
        this.status = status;
        if (error) this.output.warn(`status: ${error}`);
        this.render();
      }),
      client.onNotification('bastion/chatDelta', (params: { sessionId: string; delta: string }) => this.chat.onDelta(params)),
      client.onDidChangeState((event) => {
        if (event.newState === State.Running) this.state = 'running';
        else if (event.newState === State.Starting) this.state = 'starting';
        else if (this.state !== 'failed') this.state = 'stopped';
        this.render();
      }),
    );
    this.client = client;
    this.state = 'starting';
    this.status = undefined;
    this.render();
    this.output.info(`starting ${location.command} lsp (found by ${location.how}); key ${key ? 'from SecretStorage/environment' : 'not set'}`);
    try {
      await client.start();
      initialized = true;
      this.state = 'running';
    } catch (error) {
      this.state = 'failed';
      const message =
        `Bastion: \`${location.command} lsp\` did not start (${error instanceof Error ? error.message : String(error)}; its output is in the Bastion log). ` + SETUP_HINT;
      this.output.error(message);
      this.offerHelp(message);
    }
    this.render();
  }

  private offerHelp(message: string): void {
    void vscode.window.showErrorMessage(message, 'Open Settings', 'Show Log').then((pick) => {
      if (pick === 'Open Settings') void vscode.commands.executeCommand('workbench.action.openSettings', 'bastion.serverPath');
      if (pick === 'Show Log') this.output.show();
    });
  }

  private disposeClient(): void {
    for (const listener of this.clientListeners.splice(0)) listener.dispose();
  }

  async restart(): Promise<void> {
    const previous = this.client;
    this.client = undefined;
    if (previous) {
      try {
        await previous.stop(5000);
      } catch (error) {
        this.output.warn(`stopping the server: ${String(error)}`);
      }
    }
    await this.start();
  }

  async onConfigurationChanged(event: vscode.ConfigurationChangeEvent): Promise<void> {
    if (!event.affectsConfiguration('bastion')) return;
    this.render();
    if (event.affectsConfiguration('bastion.serverPath') || !this.client || this.client.state !== State.Running) {
      await this.restart();
      return;
    }
    await this.client.sendNotification(DidChangeConfigurationNotification.type, { settings: serverSettings(this.config()) });
  }

  async setKey(): Promise<void> {
    const key = await vscode.window.showInputBox({
      title: 'Bastion: Set Key',
      prompt: 'Your Bastion user key (from `bastion keys create NAME`). It is kept in VS Code\'s secret storage, never in settings.',
      password: true,
      ignoreFocusOut: true,
      validateInput: (value) => (value.trim() ? undefined : 'The key is empty'),
    });
    if (key === undefined) return;
    await this.context.secrets.store(KEY_SECRET, key.trim());
    this.output.info('user key stored in SecretStorage; restarting the language server');
    await this.restart();
  }

  async toggleInline(): Promise<void> {
    const next = !this.inlineEnabled();
    await this.config().update('inlineCompletions.enabled', next, vscode.ConfigurationTarget.Global);
    void vscode.window.setStatusBarMessage(`Bastion: inline completions ${next ? 'on' : 'off'}`, 3000);
  }

  showLog(): void {
    const s = this.status;
    this.output.info(
      `status: ${this.state}; ` +
        (s ? `connected=${s.connected} proxy=${s.proxyUrl ?? ''} model=${s.model ?? ''} mode=${s.completionMode ?? ''} lastError=${s.lastError ?? ''}` : 'no status yet') +
        `; key ${this.hasKey ? 'set' : 'not set'}; inline completions ${this.inlineEnabled() ? 'on' : 'off'}`,
    );
    this.output.show(true);
  }

  /** Fix / Generate tests: list the server's actions for the selection, resolve the one, apply it. */
  async runAction(titlePrefix: string, label: string): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    if (!editor) {
      void vscode.window.showInformationMessage(`Bastion: open a file to ${label.toLowerCase()}.`);
      return;
    }
    const client = await this.ready();
    if (!client) return;
    const document = editor.document;
    const c2p = client.code2ProtocolConverter;
    const range = editor.selection;
    const diagnostics = vscode.languages.getDiagnostics(document.uri).filter((d) => d.range.intersection(range) !== undefined);
    await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: `Bastion: ${label}…`, cancellable: true },
      async (_progress, token) => {
        try {
          const listed = await client.sendRequest(
            CodeActionRequest.type,
            {
              textDocument: c2p.asTextDocumentIdentifier(document),
              range: c2p.asRange(range),
              context: { diagnostics: await c2p.asDiagnostics(diagnostics), triggerKind: 1 },
            },
            token,
          );
          const action = (listed ?? []).find(
            (a: LspCodeAction | LspCommand): a is LspCodeAction => 'kind' in a && a.title.startsWith(titlePrefix),
          );
          if (!action) {
            void vscode.window.showInformationMessage(`Bastion: no "${label}" action here.`);
            return;
          }
          const resolved = await client.sendRequest(CodeActionResolveRequest.type, action, token);
          if (token.isCancellationRequested) return;
          if (!resolved.edit) {
            void vscode.window.showInformationMessage(`Bastion: the model proposed no change.`);
            return;
          }
          const edit = await client.protocol2CodeConverter.asWorkspaceEdit(resolved.edit);
          if (!(await vscode.workspace.applyEdit(edit))) {
            void vscode.window.showWarningMessage('Bastion: the edit could not be applied (the file changed?). Try again.');
          }
        } catch (error) {
          if (!token.isCancellationRequested) {
            void vscode.window.showWarningMessage(`Bastion: ${label} failed: ${error instanceof Error ? error.message : String(error)}`);
          }
        }
      },
    );
  }

  async dispose(): Promise<void> {
    this.disposeClient();
    this.statusItem.dispose();
    const client = this.client;
    this.client = undefined;
    if (client) await client.stop(3000).catch(() => undefined);
    this.output.dispose();
  }
}

let bastion: Bastion | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const b = (bastion = new Bastion(context));
  const command = (id: string, run: (...args: unknown[]) => unknown) => context.subscriptions.push(vscode.commands.registerCommand(id, run));
  context.subscriptions.push(
    vscode.window.registerWebviewViewProvider(ChatViewProvider.viewType, b.chat, { webviewOptions: { retainContextWhenHidden: true } }),
    vscode.workspace.onDidChangeConfiguration((event) => void b.onConfigurationChanged(event)),
    vscode.window.onDidChangeActiveTextEditor((editor) => b.chat.trackEditor(editor)),
    vscode.window.onDidChangeTextEditorSelection((event) => b.chat.trackEditor(event.textEditor)),
  );
  b.chat.trackEditor(vscode.window.activeTextEditor);
  command('bastion.setKey', () => b.setKey());
  command('bastion.showLog', () => b.showLog());
  command('bastion.restartServer', () => b.restart());
  command('bastion.toggleInlineCompletions', () => b.toggleInline());
  command('bastion.fix', () => b.runAction('Bastion: Fix', 'Fix'));
  command('bastion.generateTests', () => b.runAction('Bastion: Generate tests', 'Generate tests'));
  command('bastion.newChat', () => b.chat.newChat());
  // The server's own `bastion.reindex` (registered by the language client) shows LSP progress.
  command('bastion.reindexWorkspace', async () => {
    const client = b.client;
    if (!client) {
      void vscode.window.showWarningMessage('Bastion: the language server is not running.');
      return;
    }
    await client.sendRequest('workspace/executeCommand', { command: 'bastion.reindex', arguments: [] });
  });
  command('bastion.explainSelection', () => {
    const editor = vscode.window.activeTextEditor;
    if (!editor) {
      void vscode.window.showInformationMessage('Bastion: select some code to explain.');
      return;
    }
    const client = b.client;
    const uri = client ? client.code2ProtocolConverter.asUri(editor.document.uri) : editor.document.uri.toString();
    const s = editor.selection;
    const selection = { start: { line: s.start.line, character: s.start.character }, end: { line: s.end.line, character: s.end.character } };
    return b.chat.ask('Explain this code.', { uri, selection });
  });
  await b.start();
}

export async function deactivate(): Promise<void> {
  await bastion?.dispose();
  bastion = undefined;
}
