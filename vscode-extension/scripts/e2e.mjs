// End-to-end test in a real VS Code: code-server + the packaged .vsix, driven by playwright-core
// with Debian's chromium, against `bastion up` (real model, real proxy). Run by scripts/e2e.sh.
//
//   (a) typing shows ghost text from the model and Tab accepts it
//   (b) the lightbulb's Bastion quick fix applies
//   (c) the chat view streams an answer and lists its context (a cited chunk opens the file)
//   (d) screenshots of every step, in the folder printed at the start
import { spawn, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const here = path.dirname(fileURLToPath(import.meta.url));
const extensionDir = path.resolve(here, '..');
const repo = path.resolve(extensionDir, '..');
const tools = process.env.BASTION_E2E_TOOLS ?? path.join(extensionDir, '.e2e-tools');
const require = createRequire(path.join(tools, 'package.json'));
const { chromium } = require('playwright-core');

const vsix = path.join(extensionDir, 'bastion.vsix');
const bastionBin = path.join(repo, '.venv', 'bin', 'bastion');
const codeServer = path.join(tools, 'node_modules', '.bin', 'code-server');
const stamp = new Date().toISOString().replace(/[:.]/g, '-');
const shots = path.resolve(process.env.BASTION_E2E_OUT ?? path.join(extensionDir, '.e2e-output', stamp));
fs.mkdirSync(shots, { recursive: true });
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bastion-vscode-e2e-'));
const t0 = Date.now();
const log = (message) => console.log(`[e2e ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${message}`);
const children = [];
const results = [];

log(`screenshots: ${shots}`);
log(`scratch: ${tmp}`);

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** Spawn detached (own process group), tee output to a log file, resolve when `ready` is seen. */
function startProcess(name, command, args, options, ready, timeoutMs) {
  const logFile = path.join(shots, `${name}.log`);
  const out = fs.createWriteStream(logFile);
  const child = spawn(command, args, { ...options, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push({ name, child });
  let seen = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} not ready in ${timeoutMs / 1000}s; see ${logFile}\n${seen.slice(-3000)}`)), timeoutMs);
    const onData = (chunk) => {
      out.write(chunk);
      seen += chunk.toString();
      if (seen.length > 200000) seen = seen.slice(-100000);
      if (ready(seen)) {
        clearTimeout(timer);
        resolve(child);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? signal}) before it was ready; see ${logFile}\n${seen.slice(-3000)}`));
    });
  });
}

async function stopAll() {
  for (const { name, child } of children.reverse()) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    try {
      process.kill(-child.pid, name === 'bastion-up' ? 'SIGINT' : 'SIGTERM');
    } catch {}
    const exited = await Promise.race([
      new Promise((resolve) => child.once('exit', () => resolve(true))),
      new Promise((resolve) => setTimeout(() => resolve(false), 15000)),
    ]);
    if (!exited) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {}
    }
  }
}

async function waitFor(what, fn, timeoutMs, intervalMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
  throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}${last ? ` (${last.message})` : ''}`);
}

const GEOMETRY = `def circle_area(radius: float) -> float:
    """Area of a circle."""
    return math.pi * radius * radius


def square_area(side: float) -> float:
    return side * side
`;
const FIB = `def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)


def factorial(n: int) -> int:
    """Return n factorial."""`;

let page;
let shotNumber = 0;
async function shot(name) {
  const file = path.join(shots, `${String(++shotNumber).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file });
  log(`screenshot ${file}`);
  return file;
}

/** The extension's Bastion output channel (the language server's log lines too). */
let extensionLogDir;
function bastionLog() {
  if (!extensionLogDir) return '(no log yet)';
  try {
    return execFileSync('bash', ['-c', `find "${extensionLogDir}" -iname '*Bastion*' -type f -exec cat {} +`], { encoding: 'utf8' });
  } catch (error) {
    return `(could not read the log: ${error.message})`;
  }
}

function bastionLogTail(lines = 25) {
  return bastionLog().trimEnd().split('\n').slice(-lines).join('\n');
}

async function step(name, fn) {
  const started = Date.now();
  try {
    await page.keyboard.press('Escape');
    await page.keyboard.press('Escape');
    await fn();
    results.push({ name, ok: true, s: (Date.now() - started) / 1000 });
    log(`PASS ${name}`);
  } catch (error) {
    results.push({ name, ok: false, s: (Date.now() - started) / 1000, error: error.message });
    log(`FAIL ${name}: ${error.stack ?? error.message}`);
    log(`the Bastion log ends:\n${bastionLogTail()}`);
    try {
      await shot(`FAILED-${name.replace(/\W+/g, '-')}`);
    } catch {}
  }
}

async function runCommand(title) {
  await page.keyboard.press('F1');
  const input = page.locator('.quick-input-widget input');
  await input.waitFor({ state: 'visible', timeout: 10000 });
  await input.fill(`>${title}`);
  const row = page.locator('.quick-input-list .monaco-list-row', { hasText: title }).first();
  await row.waitFor({ state: 'visible', timeout: 10000 });
  await page.waitForTimeout(300);
  await page.keyboard.press('Enter');
}

async function openFile(name) {
  await page.keyboard.press('Control+P');
  const input = page.locator('.quick-input-widget input');
  await input.waitFor({ state: 'visible', timeout: 10000 });
  await input.fill(name);
  await page.locator('.quick-input-list .monaco-list-row', { hasText: name }).first().waitFor({ timeout: 15000 });
  await page.keyboard.press('Enter');
  await page.locator(`.tab.active`, { hasText: name }).waitFor({ timeout: 15000 });
  await page.locator('.monaco-editor .view-lines').first().waitFor();
}

/** The active editor's text as rendered (the file is short enough to be all on screen), without ghost text. */
async function editorText() {
  return page.evaluate(() => {
    const lines = [...document.querySelectorAll('.editor-group-container.active .monaco-editor .view-lines .view-line')];
    return lines
      .map((l) => {
        const copy = l.cloneNode(true);
        for (const ghost of copy.querySelectorAll('[class*="ghost-text"]')) ghost.remove();
        return { top: parseFloat(l.style.top), text: copy.textContent.replace(/\u00a0/g, ' ') };
      })
      .sort((a, b) => a.top - b.top)
      .map((l) => l.text)
      .join('\n');
  });
}

/** Bastion's own status bar item (VS Code ids it `<extension id>.bastion.status`), not a progress item titled "Bastion: …". */
async function statusText() {
  const own = page.locator('.statusbar-item[id$="bastion.status"]');
  const item = (await own.count()) ? own.first() : page.locator('.statusbar-item', { hasText: 'Bastion' }).first();
  return (await item.textContent({ timeout: 2000 }))?.trim() ?? '';
}

async function main() {
  for (const [what, file] of [['the packaged extension (npm run package)', vsix], ['the Python environment (bash scripts/setup.sh)', bastionBin], ['code-server (scripts/e2e.sh installs it)', codeServer]]) {
    if (!fs.existsSync(file)) throw new Error(`missing ${what}: ${file}`);
  }

  // 1. The stack: `bastion up` on fresh ports and a fresh data dir.
  const dataDir = path.join(tmp, 'data');
  const [proxyPort, modelPort, codePort] = [await freePort(), await freePort(), await freePort()];
  log(`starting bastion up (proxy ${proxyPort}, model ${modelPort})`);
  await startProcess(
    'bastion-up',
    bastionBin,
    ['up', '--data-dir', dataDir, '--proxy-port', String(proxyPort), '--model-port', String(modelPort)],
    { cwd: repo, env: { ...process.env, PYTHONUNBUFFERED: '1' } },
    (text) => text.includes('Bastion is ready'),
    300000,
  );
  const key = fs.readFileSync(path.join(dataDir, 'user.key'), 'utf8').trim();
  log('bastion up is ready');

  // 2. A workspace, a VS Code profile, and the .vsix installed into a fresh extensions dir.
  const workspace = path.join(tmp, 'workspace');
  fs.mkdirSync(workspace);
  fs.writeFileSync(path.join(workspace, 'geometry.py'), GEOMETRY);
  fs.writeFileSync(path.join(workspace, 'fib.py'), FIB);
  const home = path.join(tmp, 'home');
  const userData = path.join(tmp, 'user-data');
  extensionLogDir = path.join(userData, 'logs');
  const extensions = path.join(tmp, 'extensions');
  for (const dir of [home, userData, extensions, path.join(userData, 'User')]) fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(userData, 'User', 'settings.json'),
    JSON.stringify(
      {
        'bastion.serverPath': bastionBin,
        'bastion.proxyUrl': `http://127.0.0.1:${proxyPort}`,
        'bastion.temperature': 0,
        // Two cores shared with chromium: llama.cpp finishes each superseded request, so allow time.
        'bastion.requestTimeoutS': 60,
        'bastion.maxTokens': 48,
        'workbench.secondarySideBar.defaultVisibility': 'hidden',
        'workbench.startupEditor': 'none',
        'workbench.tips.enabled': false,
        'workbench.welcomePage.walkthroughs.openOnInstall': false,
        'security.workspace.trust.enabled': false,
        'telemetry.telemetryLevel': 'off',
        'update.mode': 'none',
        'extensions.autoCheckUpdates': false,
        'extensions.autoUpdate': false,
        'extensions.ignoreRecommendations': true,
        'chat.disableAIFeatures': true,
        'editor.inlineSuggest.enabled': true,
        'editor.quickSuggestions': { other: 'off', comments: 'off', strings: 'off' },
        'editor.suggestOnTriggerCharacters': false,
        'editor.lightbulb.enabled': 'on',
        'files.autoSave': 'off',
        'window.restoreWindows': 'none',
      },
      null,
      2,
    ),
  );
  const nodeBin = path.dirname(process.execPath);
  const env = {
    ...process.env,
    PATH: `${nodeBin}:${process.env.PATH}`,
    HOME: home,
    XDG_CONFIG_HOME: path.join(home, '.config'),
    XDG_DATA_HOME: path.join(home, '.local', 'share'),
    XDG_CACHE_HOME: path.join(home, '.cache'),
    BASTION_API_KEY: '', // the key must come from SecretStorage ("Bastion: Set Key"), not the environment
  };
  delete env.BASTION_API_KEY;
  const csArgs = ['--user-data-dir', userData, '--extensions-dir', extensions];
  log('installing the .vsix into code-server');
  const installOut = execFileSync(codeServer, [...csArgs, '--install-extension', vsix, '--force'], { env, encoding: 'utf8', timeout: 120000 });
  fs.writeFileSync(path.join(shots, 'install-extension.log'), installOut);
  if (!fs.readdirSync(extensions).some((d) => d.startsWith('bastion.bastion'))) throw new Error(`the .vsix did not install:\n${installOut}`);

  log(`starting code-server on 127.0.0.1:${codePort}`);
  await startProcess(
    'code-server',
    codeServer,
    [...csArgs, '--bind-addr', `127.0.0.1:${codePort}`, '--auth', 'none', '--disable-telemetry', '--disable-update-check', '--disable-workspace-trust', '--disable-getting-started-override', workspace],
    { cwd: workspace, env },
    (text) => text.includes('HTTP server listening'),
    120000,
  );

  // 3. Chromium, with every non-loopback request aborted.
  const context = await chromium.launchPersistentContext(path.join(tmp, 'chromium'), {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const blocked = new Set();
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url());
    const loopback = ['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname) || url.protocol === 'data:' || url.protocol === 'blob:';
    if (loopback || url.protocol.startsWith('vscode')) return route.continue();
    blocked.add(url.origin);
    return route.abort();
  });
  page = context.pages()[0] ?? (await context.newPage());
  const consoleErrors = [];
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text());
  });
  await page.goto(`http://127.0.0.1:${codePort}/?folder=${encodeURIComponent(workspace)}`);
  await page.locator('.monaco-workbench').waitFor({ timeout: 60000 });
  await page.locator('.statusbar-item', { hasText: 'Bastion' }).first().waitFor({ timeout: 60000 });
  log(`workbench up; status bar: "${await statusText()}"`);

  await step('set key through SecretStorage and connect', async () => {
    await waitFor('the "Bastion: set key" status', async () => (await statusText()).includes('set key') || (await statusText()).includes('error'), 60000);
    await shot('no-key');
    await runCommand('Bastion: Set Key');
    const box = page.locator('.quick-input-widget input[type="password"]');
    await box.waitFor({ timeout: 10000 });
    await box.fill(key);
    await page.keyboard.press('Enter');
    // The model's name, not just any status: the server that ran without a key may still be
    // reporting "embedding" while the extension restarts it with the key.
    const text = await waitFor('a connected status with the model', async () => {
      const t = await statusText();
      return /Bastion: smollm2/.test(t) ? t : undefined;
    }, 90000);
    log(`status bar: "${text}"`);
    const settings = fs.readFileSync(path.join(userData, 'User', 'settings.json'), 'utf8');
    if (settings.includes(key)) throw new Error('the key leaked into settings.json');
    await shot('connected');
  });

  await step('(a) ghost text from the model, Tab accepts it', async () => {
    await openFile('fib.py');
    await page.locator('.editor-group-container.active .monaco-editor .view-lines').click();
    await page.keyboard.press('Control+End');
    // Enter after the docstring, then start an `if`: the model is asked at each keystroke (the
    // newest request supersedes the others). A retry nudges the editor to ask again.
    const attempts = [
      async () => {
        await page.keyboard.press('Enter');
        await page.keyboard.type('if n', { delay: 40 });
      },
      async () => {
        await page.keyboard.type(' ', { delay: 40 });
        await page.keyboard.press('Backspace');
      },
      async () => page.keyboard.press('Alt+Backslash'),
    ];
    let ghost;
    for (const [i, attempt] of attempts.entries()) {
      await attempt();
      try {
        ghost = await waitFor('ghost text', async () => {
          const el = page.locator('.ghost-text-decoration, .ghost-text-decoration-preview').first();
          return (await el.count()) && (await el.isVisible()) ? el : undefined;
        }, 40000);
        break;
      } catch (error) {
        log(`attempt ${i + 1}: no ghost text (${error.message})`);
        if (i === attempts.length - 1) throw error;
      }
    }
    const clean = (texts) => texts.join('').replace(/\u00a0/g, ' ');
    const inline = clean(await page.locator('.ghost-text-decoration').allTextContents());
    const ghostText = clean(await page.locator('.ghost-text-decoration, .ghost-text-decoration-preview, .ghost-text').allTextContents());
    log(`ghost text: inline ${JSON.stringify(inline)}, all ${JSON.stringify(ghostText)}`);
    await shot('ghost-text');
    const before = await editorText();
    const typedLine = before.split('\n').findLast((l) => l.trim().startsWith('if n')) ?? '';
    await page.keyboard.press('Tab');
    await waitFor('the ghost text to be gone', async () => (await page.locator('.ghost-text-decoration').count()) === 0, 10000);
    const after = await waitFor('the accepted text', async () => {
      const t = await editorText();
      return t !== before && t.includes(typedLine + inline) ? t : undefined;
    }, 10000).catch(async () => {
      throw new Error(`Tab did not insert the suggestion ${JSON.stringify(inline)}.\nbefore:\n${before}\nafter:\n${await editorText()}`);
    });
    const tail = after.split('\n').slice(before.split('\n').length - 1);
    log(`accepted; the new lines read: ${JSON.stringify(tail)}`);
    await shot('ghost-text-accepted');
  });

  await step('(b) lightbulb quick fix applies', async () => {
    await openFile('geometry.py');
    const editor = page.locator('.editor-group-container.active .monaco-editor .view-lines');
    await editor.click();
    await page.keyboard.press('Control+Home');
    await page.keyboard.press('ArrowDown');
    await page.keyboard.press('ArrowDown');
    await page.keyboard.press('End');
    const before = await editorText();
    const widget = page.locator('.action-widget:not(.action-list-submenu-panel)');
    // A user who sees no menu presses again; each miss is logged with what the editor showed.
    for (let attempt = 1; ; attempt++) {
      await page.keyboard.press('Control+Period');
      const shown = await widget.waitFor({ state: 'visible', timeout: 10000 }).then(() => true, () => false);
      if (shown) break;
      const message = await page.locator('.monaco-editor-overlaymessage').allTextContents().catch(() => []);
      const focused = await page.evaluate(() => document.activeElement?.className ?? '(none)');
      log(`attempt ${attempt}: no code action menu in 10 s; editor message ${JSON.stringify(message)}; focus on "${focused}"`);
      if (attempt === 3) throw new Error('Ctrl+. showed no code action menu in three tries');
      await page.keyboard.press('Escape');
      await editor.click();
      await page.keyboard.press('Control+Home');
      await page.keyboard.press('ArrowDown');
      await page.keyboard.press('ArrowDown');
      await page.keyboard.press('End');
    }
    const fix = widget.locator('.monaco-list-row', { hasText: 'Bastion: Fix this' }).first();
    await fix.waitFor({ timeout: 10000 });
    await shot('lightbulb-menu');
    await fix.click();
    const after = await waitFor('the fix to change the file', async () => {
      const t = await editorText();
      return t !== before ? t : undefined;
    }, 120000);
    log(`fixed file:\n${after}`);
    await page.waitForTimeout(500);
    await shot('quick-fix-applied');
  });

  await step('(c) chat streams an answer and lists its context', async () => {
    await page.locator('.activitybar .action-item a[aria-label^="Bastion"]').first().click();
    const frame = await waitFor('the chat webview', async () => {
      for (const f of page.frames()) {
        try {
          if (await f.locator('#input').count()) return f;
        } catch {}
      }
      return undefined;
    }, 30000);
    await frame.locator('#input').fill('What does circle_area in geometry.py compute? Mention square_area too.');
    await frame.locator('#input').press('Enter');
    const partials = new Set();
    const deadline = Date.now() + 180000;
    let streamingShot = false;
    while (Date.now() < deadline) {
      const state = await frame.locator('.turn .answer').last().getAttribute('data-state');
      const text = (await frame.locator('.turn .answer').last().textContent()) ?? '';
      if (state === 'streaming' && text.trim()) {
        partials.add(text.length);
        if (!streamingShot && text.length > 40) {
          streamingShot = true;
          await shot('chat-streaming');
        }
      }
      if (state && state !== 'streaming') break;
      await page.waitForTimeout(100);
    }
    const state = await frame.locator('.turn .answer').last().getAttribute('data-state');
    const answer = (await frame.locator('.turn .answer').last().textContent()) ?? '';
    if (state !== 'done') throw new Error(`the chat turn ended as ${state}: ${await frame.locator('.turn').last().textContent()}`);
    log(`answer (${answer.length} chars, seen streaming at ${partials.size} lengths): ${JSON.stringify(answer.slice(0, 300))}`);
    if (partials.size < 2) throw new Error(`the answer did not stream (saw ${partials.size} partial states)`);
    const chunks = await frame.locator('.chunks a.chunk').allTextContents();
    log(`context listed: ${JSON.stringify(chunks)}`);
    if (!chunks.length) throw new Error('no context chunks listed');
    await shot('chat-answer-with-context');
    const target = chunks.find((c) => c.startsWith('geometry.py')) ?? chunks[0];
    // Open another file first, so that clicking the chunk must switch the editor.
    await frame.locator('.chunks a.chunk', { hasText: target }).first().click();
    const name = target.split(':')[0];
    await page.locator('.tab.active', { hasText: name }).waitFor({ timeout: 15000 });
    await shot('chat-chunk-opened');
  });

  await step('(c2) Stop cancels the answer, New chat clears, Explain selection answers in the chat', async () => {
    const frame = await waitFor('the chat webview', async () => {
      for (const f of page.frames()) {
        try {
          if (await f.locator('#input').count()) return f;
        } catch {}
      }
      return undefined;
    }, 30000);
    await frame.locator('#input').fill('Write a long, detailed essay about circle_area and square_area, with examples.');
    await frame.locator('#input').press('Enter');
    const answer = frame.locator('.turn .answer').last();
    await waitFor('the answer to start streaming', async () => (await answer.getAttribute('data-state')) === 'streaming' && ((await answer.textContent()) ?? '').trim().length > 0, 120000, 30);
    await frame.locator('#stop').click();
    await waitFor('the turn to show Stopped', async () => (await answer.getAttribute('data-state')) === 'stopped', 10000);
    const partial = (await answer.textContent()) ?? '';
    await shot('chat-stopped');
    const { DatabaseSync } = await import('node:sqlite');
    const aborted = await waitFor('the proxy to record the cancelled chat', async () => {
      const db = new DatabaseSync(path.join(dataDir, 'audit.sqlite3'), { readOnly: true });
      const rows = db.prepare("SELECT o.aborted_by, o.completed FROM requests r JOIN outcomes o ON o.request_id = r.id WHERE r.feature = 'chat'").all();
      db.close();
      return rows.find((r) => r.aborted_by === 'client');
    }, 30000);
    log(`stopped after ${partial.length} chars; the proxy recorded the chat as aborted_by=${aborted.aborted_by}`);
    if ((await answer.getAttribute('data-state')) !== 'stopped') throw new Error('the stopped turn changed state');
    await frame.locator('#new').click();
    await waitFor('an empty transcript', async () => (await frame.locator('.turn').count()) === 0, 10000);
    await openFile('geometry.py');
    await page.locator('.editor-group-container.active .monaco-editor .view-lines').click();
    await page.keyboard.press('Control+Home');
    for (let i = 0; i < 3; i++) await page.keyboard.press('Shift+ArrowDown');
    await runCommand('Bastion: Explain selection');
    const turn = frame.locator('.turn').last();
    await waitFor('the explanation', async () => (await turn.locator('.answer').getAttribute('data-state')) === 'done', 120000);
    const context = await turn.locator('.context').textContent();
    const question = await turn.locator('.question').textContent();
    log(`explain: ${JSON.stringify(question)} with ${JSON.stringify(context)}: ${JSON.stringify(((await turn.locator('.answer').textContent()) ?? '').slice(0, 200))}`);
    if (!context?.includes('geometry.py:1-3')) throw new Error(`the selection was not sent as context: ${context}`);
    await shot('chat-explain-selection');
  });

  await step('the proxy audited every feature for the user', async () => {
    const { DatabaseSync } = await import('node:sqlite');
    const db = new DatabaseSync(path.join(dataDir, 'audit.sqlite3'), { readOnly: true });
    const rows = db.prepare('SELECT feature, user, count(*) AS n FROM requests GROUP BY feature, user').all();
    db.close();
    log(`audit log: ${JSON.stringify(rows)}`);
    const features = new Set(rows.map((r) => r.feature));
    for (const feature of ['completion', 'action', 'chat']) {
      if (!features.has(feature)) throw new Error(`no '${feature}' request in the audit log`);
    }
  });

  await step('a missing or broken server says what to run', async () => {
    // Through the Settings editor, as a user would (edits to settings.json on disk are not picked up).
    const broken = path.join(tmp, 'broken-bastion');
    fs.writeFileSync(broken, '#!/bin/sh\necho "ModuleNotFoundError: No module named lsp_server" >&2\nexit 1\n', { mode: 0o755 });
    const setServerPath = async (value) => {
      const input = page.locator('.settings-editor .setting-item-contents', { hasText: 'Server Path' }).locator('input').first();
      if (await input.isVisible().catch(() => false)) {
        await input.fill(value);
        await input.press('Enter');
        return;
      }
      await runCommand('Preferences: Open User Settings');
      const search = page.locator('.settings-editor .search-container .monaco-editor').first();
      await search.waitFor({ timeout: 15000 });
      await waitFor('the bastion.serverPath setting', async () => {
        if (await input.isVisible().catch(() => false)) return true;
        await search.click();
        await page.keyboard.press('Control+A');
        await page.keyboard.type('bastion.serverPath', { delay: 20 });
        await input.waitFor({ timeout: 4000 }).catch(() => {});
        return input.isVisible();
      }, 30000, 100);
      await input.fill(value);
      await input.press('Enter');
    };
    for (const [what, serverPath] of [['missing', path.join(tmp, 'no-such', 'bastion')], ['broken', broken]]) {
      await setServerPath(serverPath);
      const toast = page.locator('.notifications-toasts .notification-toast', { hasText: 'scripts/setup.sh' }).last();
      await toast.waitFor({ timeout: 30000 });
      const message = ((await toast.textContent()) ?? '').replace(/\s+/g, ' ');
      log(`${what} server: "${message.slice(0, 300)}"; status bar "${await statusText()}"`);
      if (!(await statusText()).includes('server failed')) throw new Error(`status bar shows "${await statusText()}"`);
      await shot(`${what}-server-message`);
      for (const close of await page.locator('.notifications-toasts .codicon-notifications-clear').all()) await close.click().catch(() => {});
      await page.waitForTimeout(300);
    }
    await setServerPath(bastionBin);
    await waitFor('the server to come back', async () => /Bastion: smollm2/.test(await statusText()), 60000);
    log(`restored; status bar "${await statusText()}"`);
  });

  log(`blocked non-loopback requests: ${[...blocked].join(', ') || 'none'}`);
  if (consoleErrors.length) fs.writeFileSync(path.join(shots, 'browser-console-errors.log'), consoleErrors.join('\n'));
  fs.writeFileSync(path.join(shots, 'extension-output.log'), bastionLog(), { mode: 0o600 });
  await context.close();
}

let failed = false;
try {
  await main();
} catch (error) {
  failed = true;
  log(`ERROR ${error.stack ?? error.message}`);
  if (page) {
    try {
      await shot('FAILED');
    } catch {}
  }
} finally {
  await stopAll();
  if (!process.env.BASTION_E2E_KEEP) fs.rmSync(tmp, { recursive: true, force: true });
}
const expected = 7;
for (const r of results) console.log(`${r.ok ? 'PASS' : 'FAIL'} ${r.name} (${r.s.toFixed(1)} s)${r.ok ? '' : `: ${r.error.split('\n')[0]}`}`);
if (results.length < expected) failed = true;
if (results.some((r) => !r.ok)) failed = true;
console.log(`${failed ? 'E2E FAILED' : 'E2E PASSED'} in ${((Date.now() - t0) / 1000).toFixed(0)} s; screenshots and logs in ${shots}`);
const passed = results.filter((r) => r.ok).length;
console.log(`vscode-e2e: ${passed} passed, ${Math.max(expected, results.length) - passed} failed`);
process.exit(failed ? 1 : 0);
