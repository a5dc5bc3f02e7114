import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { findServer, newStatusError, serverSettings, statusFace } from '../src/config';

const reader = (values: Record<string, unknown>) => ({ get: <T>(key: string) => values[key] as T | undefined });

describe('serverSettings', () => {
  it('maps VS Code settings to the server keys and never carries a key', () => {
    const settings = serverSettings(reader({ proxyUrl: 'https://proxy:8787 ', model: '', 'inlineCompletions.enabled': false, 'indexing.enabled': false, maxTokens: 64, temperature: 0 }));
    expect(settings).toEqual({ proxyUrl: 'https://proxy:8787', inlineCompletionEnabled: false, indexingEnabled: false, maxTokens: 64, temperature: 0 });
    expect(JSON.stringify(settings)).not.toMatch(/apiKey/i);
    expect(serverSettings(reader({}))).toEqual({ proxyUrl: 'http://127.0.0.1:8787', inlineCompletionEnabled: true, indexingEnabled: true });
    expect(serverSettings(reader({ 'embeddings.enabled': false, 'embeddings.modelPath': ' /models/code ' }))).toMatchObject({ embeddingsEnabled: false, embeddingModelPath: '/models/code' });
  });
});

describe('findServer', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bastion-find-'));
  const venvBin = path.join(dir, 'ws', '.venv', 'bin');
  fs.mkdirSync(venvBin, { recursive: true });
  fs.writeFileSync(path.join(venvBin, 'bastion'), '#!/bin/sh\n', { mode: 0o755 });
  const onPath = path.join(dir, 'bin');
  fs.mkdirSync(onPath);
  fs.writeFileSync(path.join(onPath, 'bastion'), '#!/bin/sh\n', { mode: 0o755 });

  it('prefers the setting, then the workspace .venv, then PATH', () => {
    expect(findServer(path.join(onPath, 'bastion'), [path.join(dir, 'ws')], '')).toMatchObject({ found: true, how: 'setting' });
    expect(findServer('', [path.join(dir, 'ws')], onPath)).toMatchObject({ found: true, how: 'workspace', command: path.join(venvBin, 'bastion') });
    expect(findServer(undefined, [dir], onPath)).toMatchObject({ found: true, how: 'path' });
  });

  it('says what to run when nothing is found or the setting is wrong', () => {
    const none = findServer('', [dir], path.join(dir, 'nowhere'));
    expect(none.found).toBe(false);
    expect(!none.found && none.message).toContain('scripts/setup.sh');
    const wrong = findServer('/no/such/bastion', [], '');
    expect(!wrong.found && wrong.message).toContain('bastion.serverPath');
  });
});

describe('statusFace', () => {
  const base = { hasKey: true, inline: true, state: 'running' as const };
  it('shows the model when connected, an error otherwise, and asks for a key', () => {
    expect(statusFace({ connected: true, model: 'qwen', proxyUrl: 'http://p' }, base)).toMatchObject({ text: '$(shield) Bastion: qwen', error: false });
    expect(statusFace({ connected: true, model: 'qwen' }, { ...base, inline: false }).text).toContain('ghost text off');
    const failed = statusFace({ connected: false, lastError: '401 unknown key', proxyUrl: 'http://p' }, base);
    expect(failed).toMatchObject({ text: '$(error) Bastion: error', error: true });
    expect(failed.tooltip).toContain('401 unknown key');
    expect(statusFace(undefined, { ...base, hasKey: false }).text).toContain('set key');
    expect(statusFace(undefined, { ...base, state: 'failed' }).error).toBe(true);
    expect(statusFace({ connected: true, model: 'qwen', indexingPercent: 42 }, base).text).toBe('$(shield) Bastion: qwen · indexing 42 %');
    expect(statusFace({ connected: true, model: 'qwen', embeddingPercent: 7 }, base).text).toBe('$(shield) Bastion: qwen · embedding 7 %');
  });
});

describe('newStatusError', () => {
  it('names an error once, however often the status is resent, and again when it changes', () => {
    const denied = { connected: false, lastError: 'HTTP 401' };
    expect(newStatusError(undefined, denied)).toBe('HTTP 401');
    expect(newStatusError(denied, { ...denied, indexingPercent: 50 })).toBeUndefined();
    expect(newStatusError(denied, { connected: false, lastError: 'HTTP 503' })).toBe('HTTP 503');
    expect(newStatusError(denied, { connected: true, lastError: null })).toBeUndefined();
    expect(newStatusError({ connected: true }, denied)).toBe('HTTP 401');
  });
});
