// The chat webview's script: DOM wiring only; the logic is in chatModel.ts.
import { busy, emptyState, messageForClick, reduce, renderState, type ChatState, type ToExtension, type ToWebview } from './chatModel';

declare function acquireVsCodeApi(): { postMessage(message: ToExtension): void; getState(): unknown; setState(state: unknown): void };

const vscode = acquireVsCodeApi();
let state: ChatState = (vscode.getState() as ChatState | undefined) ?? emptyState();

const transcript = document.getElementById('transcript')!;
const form = document.getElementById('composer') as HTMLFormElement;
const input = document.getElementById('input') as HTMLTextAreaElement;
const send = document.getElementById('send') as HTMLButtonElement;
const stop = document.getElementById('stop') as HTMLButtonElement;
const newChat = document.getElementById('new') as HTMLButtonElement;

function render(): void {
  const atBottom = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 40;
  transcript.innerHTML = renderState(state);
  const running = busy(state);
  stop.disabled = !running;
  send.disabled = running;
  if (atBottom) transcript.scrollTop = transcript.scrollHeight;
  vscode.setState(state);
}

function submit(): void {
  const text = input.value.trim();
  if (!text || busy(state)) return;
  input.value = '';
  vscode.postMessage({ type: 'send', text });
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  submit();
});
input.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submit();
  } else if (event.key === 'Escape' && busy(state)) {
    vscode.postMessage({ type: 'stop' });
  }
});
stop.addEventListener('click', () => vscode.postMessage({ type: 'stop' }));
newChat.addEventListener('click', () => vscode.postMessage({ type: 'newChat' }));

transcript.addEventListener('click', (event) => {
  const target = (event.target as HTMLElement).closest<HTMLElement>('[data-action], [data-chunk]');
  const turn = target?.closest<HTMLElement>('[data-turn]');
  if (!target || !turn) return;
  event.preventDefault();
  const message = messageForClick(state, { ...target.dataset, turn: turn.dataset.turn });
  if (message) vscode.postMessage(message);
  if (message?.type === 'copy') {
    target.textContent = 'Copied';
    setTimeout(() => (target.textContent = 'Copy'), 1200);
  }
});

window.addEventListener('message', (event: MessageEvent<ToWebview>) => {
  state = reduce(state, event.data);
  render();
  if (event.data.type === 'reset') input.focus();
});

render();
vscode.postMessage({ type: 'ready' });
