// Small DOM helpers: every text goes in through textContent, never as HTML.
export function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
        if (value === undefined || value === null || value === false) continue;
        if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
        else if (key === 'class') el.className = value;
        else if (key === 'dataset') Object.assign(el.dataset, value);
        // Through the CSSOM: the console's CSP allows no inline style attributes.
        else if (key === 'style') Object.assign(el.style, value);
        else if (value === true) el.setAttribute(key, '');
        else el.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
        if (child === undefined || child === null || child === false) continue;
        el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
}

let ids = 0;

// A labelled form field: <label for=…>text</label><input id=…>.
export function field(label, input) {
    input.id = input.id || `f${++ids}`;
    return h('div', { class: 'field' }, h('label', { for: input.id }, label), input);
}

// The service's error, in words: "<Code>: <message>".
export function describeError(err) {
    if (!err) return 'Unknown error';
    const code = err.name && err.name !== 'Error' ? err.name : err.Code || err.code;
    let message = err.message || '';
    if (message === 'UnknownError' || !message) message = err.$metadata?.httpStatusCode ? `HTTP ${err.$metadata.httpStatusCode}` : String(err);
    if (/Failed to fetch|NetworkError/i.test(message)) message = `The server could not be reached (${message}).`;
    const text = code && !message.startsWith(code) ? `${code}: ${message}` : message;
    // A policy's refusal is AccessDeniedException or, where the service's model says so,
    // NotAuthorizedException (DeleteStream, for one): both read as "Access denied".
    return /^(AccessDenied|NotAuthorized)/.test(code || '') ? `Access denied. ${text}` : text;
}

export function showError(slot, err) {
    slot.textContent = err ? describeError(err) : '';
    slot.hidden = !err;
}

// Runs `fn` with `button` disabled; errors land in `slot`. Returns fn's result or undefined.
export async function busy(button, slot, fn) {
    if (slot) showError(slot, null);
    if (button) button.disabled = true;
    try {
        return await fn();
    } catch (err) {
        if (slot) showError(slot, err);
        else throw err;
        return undefined;
    } finally {
        if (button) button.disabled = false;
    }
}

export function errorSlot() {
    return h('p', { class: 'error', role: 'alert', hidden: true });
}

// Render a channel page's loading state and list the channels: {channels, status, pageError},
// or null once the page says why there is nothing to show (no channels, or the call failed).
export async function loadChannels(ctx, title, emptyText) {
    const status = h('p', { class: 'status', role: 'status' }, 'Loading channels…');
    const pageError = errorSlot();
    ctx.render(title, status, pageError);
    let channels;
    try {
        channels = await ctx.api.listChannels();
    } catch (err) {
        if (ctx.expired(err)) return null;
        status.textContent = '';
        showError(pageError, err);
        return null;
    }
    if (!channels.length) {
        status.textContent = emptyText;
        return null;
    }
    return { channels, status, pageError };
}
