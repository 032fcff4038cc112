// Channels and streams: list, create, delete, and link a channel to a stream (media storage).
import { busy, describeError, errorSlot, field, h, showError } from './dom.js';

function nameOf(arn) {
    return arn ? arn.split('/')[1] || arn : '';
}

export async function homePage(ctx) {
    const { api } = ctx;
    const status = h('p', { class: 'status', role: 'status' }, 'Loading channels and streams…');
    const pageError = errorSlot();
    ctx.render('Channels and streams', status, pageError);
    let channels;
    let streams;
    try {
        [channels, streams] = await Promise.all([api.listChannels(), api.listStreams()]);
    } catch (err) {
        if (ctx.expired(err)) return;
        status.textContent = '';
        showError(pageError, err);
        return;
    }
    const storage = new Map();
    await Promise.all(
        channels.map(async (c) => {
            try {
                storage.set(c.ChannelARN, await api.mediaStorage(c.ChannelARN));
            } catch (err) {
                storage.set(c.ChannelARN, { error: describeError(err) });
            }
        }),
    );
    const reload = () => homePage(ctx);

    // Channels
    const channelError = errorSlot();
    const channelRows = channels.map((c) => {
        const ms = storage.get(c.ChannelARN);
        const linked = ms && ms.Status === 'ENABLED' ? nameOf(ms.StreamARN) : ms && ms.error ? ms.error : 'none';
        const del = h('button', { type: 'button', class: 'danger', 'aria-label': `Delete channel ${c.ChannelName}` }, 'Delete');
        del.addEventListener('click', () => {
            if (!window.confirm(`Delete signaling channel ${c.ChannelName}?`)) return;
            busy(del, channelError, async () => {
                await api.deleteChannel(c.ChannelARN);
                reload();
            });
        });
        return h(
            'tr',
            { dataset: { channel: c.ChannelName } },
            h('th', { scope: 'row' }, c.ChannelName),
            h('td', { 'data-label': 'Type' }, c.ChannelType || ''),
            h('td', { 'data-label': 'Status' }, c.ChannelStatus || ''),
            h('td', { 'data-label': 'Media storage', class: 'storage' }, linked),
            h(
                'td',
                {},
                h('a', { href: `#/channel/${encodeURIComponent(c.ChannelName)}`, 'aria-label': `Settings and tags of ${c.ChannelName}` }, 'Settings'),
                ' ',
                h('a', { href: `#/live/${encodeURIComponent(c.ChannelName)}`, 'aria-label': `Watch ${c.ChannelName} live` }, 'Live'),
                ' ',
                h('a', { href: `#/sessions/${encodeURIComponent(c.ChannelName)}`, 'aria-label': `Sessions of ${c.ChannelName}` }, 'Sessions'),
                ' ',
                del,
            ),
        );
    });
    const channelTable = channels.length
        ? h(
              'table',
              { 'aria-label': 'Signaling channels' },
              h('thead', {}, h('tr', {}, ['Name', 'Type', 'Status', 'Media storage', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))),
              h('tbody', {}, channelRows),
          )
        : h('p', { class: 'empty' }, 'No signaling channels yet.');

    const channelName = h('input', { name: 'channelName', required: true, spellcheck: 'false', autocomplete: 'off' });
    const createChannelError = errorSlot();
    const createChannelButton = h('button', { type: 'submit' }, 'Create channel');
    const createChannel = h(
        'form',
        { class: 'inline-form', 'aria-label': 'Create signaling channel' },
        field('Channel name', channelName),
        createChannelButton,
        createChannelError,
    );
    createChannel.addEventListener('submit', (event) => {
        event.preventDefault();
        busy(createChannelButton, createChannelError, async () => {
            await api.createChannel(channelName.value.trim());
            reload();
        });
    });

    // Streams
    const streamError = errorSlot();
    const streamRows = streams.map((s) => {
        const del = h('button', { type: 'button', class: 'danger', 'aria-label': `Delete stream ${s.StreamName}` }, 'Delete');
        del.addEventListener('click', () => {
            if (!window.confirm(`Delete stream ${s.StreamName} and its recordings?`)) return;
            busy(del, streamError, async () => {
                await api.deleteStream(s.StreamARN);
                reload();
            });
        });
        return h(
            'tr',
            { dataset: { stream: s.StreamName } },
            h('th', { scope: 'row' }, s.StreamName),
            h('td', { 'data-label': 'Status' }, s.Status || ''),
            h('td', { 'data-label': 'Retention' }, s.DataRetentionInHours ? `${s.DataRetentionInHours} h` : 'none'),
            h('td', { 'data-label': 'Media type' }, s.MediaType || '—'),
            h(
                'td',
                {},
                h('a', { href: `#/recordings/${encodeURIComponent(s.StreamName)}`, 'aria-label': `Recordings of ${s.StreamName}` }, 'Recordings'),
                ' ',
                h('a', { href: `#/stream/${encodeURIComponent(s.StreamName)}`, 'aria-label': `Settings and tags of ${s.StreamName}` }, 'Settings'),
                ' ',
                del,
            ),
        );
    });
    const streamTable = streams.length
        ? h(
              'table',
              { 'aria-label': 'Streams' },
              h('thead', {}, h('tr', {}, ['Name', 'Status', 'Retention', 'Media type', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))),
              h('tbody', {}, streamRows),
          )
        : h('p', { class: 'empty' }, 'No streams yet.');

    const streamName = h('input', { name: 'streamName', required: true, spellcheck: 'false', autocomplete: 'off' });
    const retention = h('input', { name: 'retention', type: 'number', min: '0', step: '1', value: '24', inputmode: 'numeric' });
    const createStreamError = errorSlot();
    const createStreamButton = h('button', { type: 'submit' }, 'Create stream');
    const createStream = h(
        'form',
        { class: 'inline-form', 'aria-label': 'Create stream' },
        field('Stream name', streamName),
        field('Data retention (hours)', retention),
        createStreamButton,
        createStreamError,
    );
    createStream.addEventListener('submit', (event) => {
        event.preventDefault();
        busy(createStreamButton, createStreamError, async () => {
            await api.createStream(streamName.value.trim(), Number(retention.value || 0));
            reload();
        });
    });

    // Media storage: link a channel to a stream
    const linkChannel = h('select', { name: 'linkChannel' }, channels.map((c) => h('option', { value: c.ChannelARN }, c.ChannelName)));
    const linkStream = h(
        'select',
        { name: 'linkStream' },
        h('option', { value: '' }, '(none: disable media storage)'),
        streams.map((s) => h('option', { value: s.StreamARN }, s.StreamName)),
    );
    // The stream list shows the chosen channel's current stream.
    const showCurrent = () => {
        const ms = storage.get(linkChannel.value);
        linkStream.value = ms && ms.Status === 'ENABLED' && streams.some((s) => s.StreamARN === ms.StreamARN) ? ms.StreamARN : '';
    };
    linkChannel.addEventListener('change', showCurrent);
    showCurrent();
    const linkError = errorSlot();
    const linkButton = h('button', { type: 'submit' }, 'Save media storage');
    const link = h(
        'form',
        { class: 'inline-form', 'aria-label': 'Media storage' },
        field('Channel', linkChannel),
        field('Stream', linkStream),
        linkButton,
        linkError,
    );
    link.addEventListener('submit', (event) => {
        event.preventDefault();
        busy(linkButton, linkError, async () => {
            await api.linkStorage(linkChannel.value, linkStream.value, Boolean(linkStream.value));
            reload();
        });
    });
    const linkSection = channels.length
        ? link
        : h('p', { class: 'empty' }, 'Create a signaling channel to record it into a stream.');

    status.textContent = `${channels.length} channel${channels.length === 1 ? '' : 's'}, ${streams.length} stream${streams.length === 1 ? '' : 's'}.`;
    ctx.render(
        'Channels and streams',
        status,
        h('section', { 'aria-labelledby': 'h-channels' }, h('h2', { id: 'h-channels' }, 'Signaling channels'), channelError, h('div', { class: 'scroll' }, channelTable), createChannel),
        h('section', { 'aria-labelledby': 'h-streams' }, h('h2', { id: 'h-streams' }, 'Streams'), streamError, h('div', { class: 'scroll' }, streamTable), createStream),
        h(
            'section',
            { 'aria-labelledby': 'h-storage' },
            h('h2', { id: 'h-storage' }, 'Media storage'),
            h('p', { class: 'hint' }, 'A channel with media storage records what its master sends (JoinStorageSession) into the stream.'),
            linkSection,
        ),
    );
}
