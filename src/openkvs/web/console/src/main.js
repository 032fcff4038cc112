// The openkvs web console: sign-in, then pages over the public KVS APIs (no private console API).
import { Api, clearCredentials, loadCredentials, saveCredentials } from './api.js';
import { busy, errorSlot, field, h, showError } from './dom.js';
import { homePage } from './home.js';
import { livePage } from './live.js';
import { recordingsPage } from './recordings.js';
import { resourcePage } from './resource.js';
import { sessionsPage } from './sessions.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const signOut = document.getElementById('sign-out');
let api = null;
let leaving = null; // the current page's cleanup
let routed = 0; // counts route changes: a page still loading when the route changed renders nothing

function render(title, ...content) {
    if (leaving) leaving();
    leaving = null;
    document.title = `${title} · openkvs console`;
    main.replaceChildren(h('h1', {}, title), ...content);
}

function signInPage() {
    routed++;
    nav.hidden = true;
    signOut.hidden = true;
    who.textContent = '';
    const akid = h('input', { name: 'accessKeyId', autocomplete: 'username', required: true, spellcheck: 'false' });
    const secret = h('input', { name: 'secretAccessKey', type: 'password', autocomplete: 'current-password', required: true });
    const error = errorSlot();
    error.id = 'sign-in-error';
    const button = h('button', { type: 'submit' }, 'Sign in');
    const form = h(
        'form',
        { class: 'card sign-in', 'aria-describedby': 'sign-in-help' },
        h('p', { id: 'sign-in-help' }, 'Use an access key of this openkvs server (for example from `openkvs credentials`). The keys stay in this tab and only sign requests.'),
        field('Access key ID', akid),
        field('Secret access key', secret),
        error,
        h('div', { class: 'actions' }, button),
    );
    form.addEventListener('submit', async (event) => {
        event.preventDefault();
        const credentials = { accessKeyId: akid.value.trim(), secretAccessKey: secret.value };
        await busy(button, error, async () => {
            const candidate = new Api(credentials);
            // A real signed call: a wrong key or secret gets the service's own error.
            await candidate.listChannels();
            saveCredentials(credentials);
            api = candidate;
            route();
        });
        if (!error.hidden) secret.focus();
    });
    render('Sign in', form);
    akid.focus();
}

function route() {
    if (!api) {
        const saved = loadCredentials();
        if (saved) api = new Api(saved);
    }
    if (!api) return signInPage();
    nav.hidden = false;
    signOut.hidden = false;
    who.textContent = api.credentials.accessKeyId;
    const hash = window.location.hash.replace(/^#/, '') || '/';
    const parts = hash.split('/').filter(Boolean).map(decodeURIComponent);
    for (const link of nav.querySelectorAll('a')) {
        const current = link.getAttribute('href') === `#/${parts[0] || ''}`;
        if (current) link.setAttribute('aria-current', 'page');
        else link.removeAttribute('aria-current');
    }
    const mine = ++routed;
    const ctx = {
        api,
        render: (title, ...content) => {
            if (mine === routed) render(title, ...content);
        },
        onLeave: (fn) => {
            if (mine === routed) leaving = fn;
            else fn();
        },
        expired: (err) => {
            // Keys revoked or rotated while signed in: back to the form with the error shown.
            if (err && /UnrecognizedClient|InvalidSignature|SignatureDoesNotMatch|NotAuthorized.*token/i.test(err.name || '')) {
                clearCredentials();
                api = null;
                signInPage();
                showError(document.getElementById('sign-in-error'), err);
                return true;
            }
            return false;
        },
    };
    if (parts[0] === 'recordings') return recordingsPage(ctx, parts[1]);
    if (parts[0] === 'live') return livePage(ctx, parts[1]);
    if (parts[0] === 'sessions') return sessionsPage(ctx, parts[1]);
    if ((parts[0] === 'channel' || parts[0] === 'stream') && parts[1]) return resourcePage(ctx, parts[0], parts[1]);
    return homePage(ctx);
}

signOut.addEventListener('click', () => {
    clearCredentials();
    api = null;
    window.location.hash = '#/';
    signInPage();
});
window.addEventListener('hashchange', route);
route();
