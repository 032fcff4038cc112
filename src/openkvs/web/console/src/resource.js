// One channel or stream: its settings (a channel's message TTL, UpdateSignalingChannel; a
// stream's data retention, UpdateDataRetention) and its tags (list, add, remove). The service's
// validation errors show next to the form that caused them.
import { busy, errorSlot, field, h, showError } from './dom.js';

function tagsSection(ctx, kind, arn, tags, reload) {
    const { api } = ctx;
    const tagError = errorSlot();
    const rows = tags.map(([key, value]) => {
        const remove = h('button', { type: 'button', class: 'danger', 'aria-label': `Remove tag ${key}` }, 'Remove');
        remove.addEventListener('click', () =>
            busy(remove, tagError, async () => {
                await (kind === 'channel' ? api.untagChannel(arn, key) : api.untagStream(arn, key));
                reload();
            }),
        );
        return h('tr', { dataset: { tag: key } }, h('th', { scope: 'row' }, key), h('td', { 'data-label': 'Value', class: 'value' }, value), h('td', {}, remove));
    });
    const table = tags.length
        ? h(
              'table',
              { 'aria-label': 'Tags' },
              h('thead', {}, h('tr', {}, ['Key', 'Value', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))),
              h('tbody', {}, rows),
          )
        : h('p', { class: 'empty' }, 'No tags.');
    const key = h('input', { name: 'tagKey', spellcheck: 'false', autocomplete: 'off' });
    const value = h('input', { name: 'tagValue', spellcheck: 'false', autocomplete: 'off' });
    const add = h('button', { type: 'submit' }, 'Add tag');
    const addError = errorSlot();
    const form = h('form', { class: 'inline-form', 'aria-label': 'Add tag' }, field('Tag key', key), field('Tag value', value), add, addError);
    form.addEventListener('submit', (event) => {
        event.preventDefault();
        // No client-side checks: the service's own validation message is what shows.
        busy(add, addError, async () => {
            await (kind === 'channel' ? api.tagChannel(arn, key.value, value.value) : api.tagStream(arn, key.value, value.value));
            reload();
        });
    });
    return h('section', { 'aria-labelledby': 'h-tags' }, h('h2', { id: 'h-tags' }, 'Tags'), tagError, h('div', { class: 'scroll' }, table), form);
}

function facts(pairs) {
    return h(
        'dl',
        { class: 'facts' },
        pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v === undefined || v === null || v === '' ? '—' : String(v))]),
    );
}

export async function resourcePage(ctx, kind, name) {
    const { api } = ctx;
    const title = `${kind === 'channel' ? 'Channel' : 'Stream'} ${name}`;
    const status = h('p', { class: 'status', role: 'status' }, 'Loading…');
    const pageError = errorSlot();
    ctx.render(title, status, pageError);
    let info;
    let tags;
    try {
        info = kind === 'channel' ? await api.describeChannel(name) : await api.describeStream(name);
        const arn = kind === 'channel' ? info.ChannelARN : info.StreamARN;
        tags = kind === 'channel' ? await api.channelTags(arn) : await api.streamTags(arn);
    } catch (err) {
        if (ctx.expired(err)) return;
        status.textContent = '';
        showError(pageError, err);
        return;
    }
    const reload = () => resourcePage(ctx, kind, name);
    const settingsError = errorSlot();
    const save = h('button', { type: 'submit' }, 'Save');
    let form;
    let about;
    if (kind === 'channel') {
        const ttl = (info.SingleMasterConfiguration && info.SingleMasterConfiguration.MessageTtlSeconds) || 60;
        const input = h('input', { name: 'messageTtl', type: 'number', step: '1', value: String(ttl), inputmode: 'numeric' });
        form = h('form', { class: 'inline-form', 'aria-label': 'Channel settings' }, field('Message TTL (seconds)', input), save, settingsError);
        form.addEventListener('submit', (event) => {
            event.preventDefault();
            busy(save, settingsError, async () => {
                await api.updateMessageTtl(info, Number(input.value));
                reload();
            });
        });
        about = facts([
            ['ARN', info.ChannelARN],
            ['Type', info.ChannelType],
            ['Status', info.ChannelStatus],
            ['Message TTL', `${ttl} s`],
            ['Version', info.Version],
        ]);
    } else {
        const input = h('input', { name: 'retention', type: 'number', step: '1', value: String(info.DataRetentionInHours || 0), inputmode: 'numeric' });
        form = h('form', { class: 'inline-form', 'aria-label': 'Stream settings' }, field('Data retention (hours)', input), save, settingsError);
        form.addEventListener('submit', (event) => {
            event.preventDefault();
            busy(save, settingsError, async () => {
                await api.updateRetention(info, Number(input.value));
                reload();
            });
        });
        about = facts([
            ['ARN', info.StreamARN],
            ['Status', info.Status],
            ['Data retention', `${info.DataRetentionInHours || 0} h`],
            ['Media type', info.MediaType],
            ['Version', info.Version],
        ]);
    }
    status.textContent = '';
    ctx.render(
        title,
        status,
        pageError,
        h('p', {}, h('a', { href: '#/' }, '← Channels and streams')),
        h('section', { 'aria-labelledby': 'h-settings' }, h('h2', { id: 'h-settings' }, 'Settings'), about, form),
        tagsSection(ctx, kind, kind === 'channel' ? info.ChannelARN : info.StreamARN, tags, reload),
    );
}
