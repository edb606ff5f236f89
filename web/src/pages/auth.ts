// Sign in / sign up (session cookie), shared by the studio and provider pages.
import { api, type S } from '../api/client';
import { field, h, showError, status } from '../dom';

/** The signed-in user, or null. */
// The session cookie is HttpOnly: this flag (set on sign-in, cleared on sign-out or a 401)
// saves asking /v1/me, and a 401 in the console, when nobody has signed in here.
const FLAG = 'gridbook.signedIn';

export async function whoAmI(): Promise<S['Me'] | null> {
  if (localStorage.getItem(FLAG) !== '1') return null;
  try { return await api.me(); } catch { localStorage.removeItem(FLAG); return null; }
}

/** A sign-in form; `role` is the role a new account gets. Calls `done` once signed in. */
export function signInForm(prefix: string, role: 'studio' | 'provider', done: () => void): HTMLElement {
  const st = status();
  const email = h('input', { id: `${prefix}-email`, type: 'email', autocomplete: 'username', required: true });
  const password = h('input', { id: `${prefix}-password`, type: 'password', autocomplete: 'current-password', required: true, minlength: 12 });
  const submit = async (e: Event, create: boolean) => {
    e.preventDefault();
    st.textContent = '';
    try {
      if (create) await api.signUp({ email: email.value, password: password.value, role });
      await api.logIn({ email: email.value, password: password.value });
      localStorage.setItem(FLAG, '1');
      window.dispatchEvent(new Event('gridbook:auth'));
      done();
    } catch (err) { showError(st, err); }
  };
  const form = h('form', { 'aria-label': 'sign in', onsubmit: (e) => void submit(e, false) },
    field('Email', email), field('Password (12+ characters)', password),
    h('button', { type: 'submit', text: 'Sign in' }),
    h('button', { type: 'button', id: `${prefix}-signup`, text: `Create a ${role} account`, onclick: (e) => { if (form.reportValidity()) void submit(e, true); } }));
  return h('div', { class: 'panel' }, h('h2', { text: 'Sign in' }), form, st);
}

export function signOutButton(done: () => void): HTMLElement {
  return h('button', { type: 'button', text: 'Sign out', onclick: async () => { await api.logOut().catch(() => undefined); localStorage.removeItem(FLAG); window.dispatchEvent(new Event('gridbook:auth')); done(); } });
}
