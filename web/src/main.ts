// The router: #/markets, #/market/<symbol>, #/studio, #/jobs/<id>, #/provider, #/protocol.
import './style.css';
import { whoAmI } from './pages/auth';
import { marketsPage } from './pages/markets';
import { marketPage } from './pages/market';
import { studioPage, jobPage } from './pages/studio';
import { providerPage } from './pages/provider';
import { protocolPage } from './pages/protocol';

export type Page = { el: HTMLElement; dispose?: () => void };

const main = document.getElementById('main')!;
const who = document.getElementById('who')!;
let current: Page | undefined;

export async function refreshWho(): Promise<void> {
  const me = await whoAmI();
  who.textContent = me ? `${me.email} (${me.role})` : 'not signed in';
}

function route(): void {
  current?.dispose?.();
  const hash = location.hash || legacyHash();
  const [, page, arg] = hash.split('/');
  let p: Page;
  switch (page) {
    case 'market': p = marketPage(decodeURIComponent(arg ?? 'EMBED-MINILM-L6')); break;
    case 'studio': p = studioPage(); break;
    case 'jobs': p = jobPage(arg ?? ''); break;
    case 'provider': p = providerPage(); break;
    case 'protocol': p = protocolPage(); break;
    default: p = marketsPage();
  }
  current = p;
  main.replaceChildren(p.el);
  for (const a of document.querySelectorAll<HTMLAnchorElement>('nav a')) {
    if (a.getAttribute('href') === `#/${page}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const heading = p.el.querySelector('h1');
  document.title = `Gridbook — ${heading?.textContent ?? ''}`;
}

/** `/?market=X` (the old trader page's link) opens that market. */
function legacyHash(): string {
  const m = new URLSearchParams(location.search).get('market');
  return m ? `#/market/${m}` : '#/markets';
}

window.addEventListener('hashchange', route);
window.addEventListener('gridbook:auth', () => void refreshWho());
route();
void refreshWho();
