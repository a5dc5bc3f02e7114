// Settings the extension passes to `bastion lsp`, and where the server executable is found.
// No VS Code import: unit-tested directly.
import * as fs from 'node:fs';
import * as path from 'node:path';

/** What `bastion.*` settings look like to this module (a slice of WorkspaceConfiguration). */
export interface ConfigReader {
  get<T>(key: string): T | undefined;
}

/**
 * The language server's settings (its `initializationOptions` and `workspace/didChangeConfiguration`
 * payload). The user key is deliberately absent: it travels in the server's environment.
 */
export function serverSettings(config: ConfigReader): Record<string, unknown> {
  const settings: Record<string, unknown> = {
    proxyUrl: (config.get<string>('proxyUrl') || 'http://127.0.0.1:8787').trim(),
    inlineCompletionEnabled: config.get<boolean>('inlineCompletions.enabled') ?? true,
    indexingEnabled: config.get<boolean>('indexing.enabled') ?? true,
  };
  const model = config.get<string>('model')?.trim();
  if (model) settings.model = model;
  const embeddingsEnabled = config.get<boolean>('embeddings.enabled');
  if (embeddingsEnabled === false) settings.embeddingsEnabled = false;
  const embeddingModelPath = config.get<string>('embeddings.modelPath')?.trim();
  if (embeddingModelPath) settings.embeddingModelPath = embeddingModelPath;
  const caBundle = config.get<string>('caBundle')?.trim();
  if (caBundle) settings.caBundle = caBundle;
  const maxTokens = config.get<number>('maxTokens');
  if (typeof maxTokens === 'number') settings.maxTokens = maxTokens;
  const requestTimeoutS = config.get<number>('requestTimeoutS');
  if (typeof requestTimeoutS === 'number') settings.requestTimeoutS = requestTimeoutS;
  const temperature = config.get<number>('temperature');
  if (typeof temperature === 'number') settings.temperature = temperature;
  return settings;
}

export type ServerLocation =
  | { found: true; command: string; how: 'setting' | 'workspace' | 'path' }
  | { found: false; message: string };

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

export const SETUP_HINT =
  'Run `bash scripts/setup.sh` (or `make setup`) in the Bastion checkout to create `.venv/bin/bastion`, ' +
  'or set `bastion.serverPath` to the `bastion` executable.';

/** The `bastion` executable: the setting, else `<folder>/.venv/bin/bastion`, else `bastion` on PATH. */
export function findServer(setting: string | undefined, folders: string[], envPath: string | undefined): ServerLocation {
  const configured = setting?.trim();
  if (configured) {
    const resolved = path.isAbsolute(configured) || !folders.length ? configured : path.join(folders[0], configured);
    if (isExecutable(resolved)) return { found: true, command: resolved, how: 'setting' };
    return {
      found: false,
      message: `Bastion: bastion.serverPath is "${configured}", which is not an executable file. ${SETUP_HINT}`,
    };
  }
  for (const folder of folders) {
    for (const candidate of [path.join(folder, '.venv', 'bin', 'bastion'), path.join(folder, '.venv', 'Scripts', 'bastion.exe')]) {
      if (isExecutable(candidate)) return { found: true, command: candidate, how: 'workspace' };
    }
  }
  for (const dir of (envPath ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, 'bastion');
    if (isExecutable(candidate)) return { found: true, command: candidate, how: 'path' };
  }
  return {
    found: false,
    message: `Bastion: the language server (\`bastion\`) was not found in the workspace's .venv or on PATH. ${SETUP_HINT}`,
  };
}

/** The status bar's face for a `bastion/status` notification. */
export interface ServerStatus {
  connected: boolean;
  proxyUrl?: string;
  model?: string | null;
  completionMode?: string | null;
  lastError?: string | null;
  indexingPercent?: number | null;
  embeddingPercent?: number | null;
}

/** The error to log for this status: only one that differs from the last status's (the server resends
 * its whole status at every change, indexing percentages included). */
export function newStatusError(previous: ServerStatus | undefined, next: ServerStatus): string | undefined {
  return next.lastError && next.lastError !== previous?.lastError ? next.lastError : undefined;
}

export interface StatusFace {
  text: string;
  tooltip: string;
  error: boolean;
}

export function statusFace(status: ServerStatus | undefined, opts: { hasKey: boolean; inline: boolean; state: 'starting' | 'running' | 'stopped' | 'failed' }): StatusFace {
  if (opts.state === 'failed') return { text: '$(error) Bastion: server failed', tooltip: 'The language server did not start. Click for the log.', error: true };
  if (opts.state === 'stopped') return { text: '$(circle-slash) Bastion: stopped', tooltip: 'The language server is not running. Click for the log.', error: true };
  if (!opts.hasKey && !(status?.connected)) {
    return { text: '$(key) Bastion: set key', tooltip: 'No user key: run "Bastion: Set Key". Click for the log.', error: true };
  }
  if (!status || opts.state === 'starting') return { text: '$(sync~spin) Bastion', tooltip: 'Starting the language server…', error: false };
  const ghost = opts.inline ? '' : ' (ghost text off)';
  const indexing = typeof status.indexingPercent === 'number'
    ? ` · indexing ${status.indexingPercent} %`
    : typeof status.embeddingPercent === 'number' ? ` · embedding ${status.embeddingPercent} %` : '';
  if (status.connected) {
    const model = (status.model || 'connected') + indexing;
    const lines = [`Connected to ${status.proxyUrl ?? 'the proxy'}`, `Model: ${status.model ?? '?'}`];
    if (status.completionMode) lines.push(`Completion: ${status.completionMode}`);
    lines.push(`Inline completions: ${opts.inline ? 'on' : 'off'}`, 'Click for the log.');
    return { text: `$(shield) Bastion: ${model}${ghost}`, tooltip: lines.join('\n'), error: false };
  }
  if (status.lastError) {
    return {
      text: '$(error) Bastion: error',
      tooltip: `${status.proxyUrl ?? 'The proxy'}: ${status.lastError}\nClick for the log.`,
      error: true,
    };
  }
  return { text: `$(plug) Bastion: not connected${ghost}`, tooltip: `Not connected to ${status.proxyUrl ?? 'the proxy'} yet. Click for the log.`, error: false };
}
