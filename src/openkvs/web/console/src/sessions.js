// Sessions: a channel's storage sessions (POST /describeStorageSessions): who is connected (the
// master and the viewers with an active session), each session's state, selected candidate
// pair, bitrate, loss, keyframe interval and, for one that failed, its verdict.
import { busy, errorSlot, field, h, loadChannels, showError } from './dom.js';

const REFRESH_MS = 5000;

function who(s) {
    return s.Role === 'MASTER' ? 'Master' : `Viewer ${s.ClientId || ''}`.trim();
}

function seconds(s) {
    const started = Date.parse(s.StartedAt);
    return Number.isFinite(started) ? Math.max(0, (Date.now() - started) / 1000) : null;
}

function loss(c) {
    if (!c || c.video_frames === undefined) return '—';
    const total = (c.video_frames || 0) + (c.frames_lost || 0);
    const pct = total ? (100 * (c.frames_lost || 0)) / total : 0;
    return `${c.frames_lost || 0} frames lost (${pct.toFixed(1)} %), ${c.nacks_sent || 0} NACKs`;
}

function keyframeInterval(s) {
    const c = s.Counts || {};
    if (!c.keyframes) return c.video_frames_forwarded !== undefined ? 'forwarded (not decoded)' : '—';
    const frames = (c.video_frames || 0) / c.keyframes;
    const age = seconds(s);
    const first = s.Firsts && typeof s.Firsts.keyframe === 'number' ? s.Firsts.keyframe : 0;
    const span = age !== null && s.State === 'ACTIVE' ? (age - first) / c.keyframes : null;
    return span !== null ? `every ${frames.toFixed(0)} frames (≈ ${span.toFixed(1)} s)` : `every ${frames.toFixed(0)} frames`;
}

function sessionRow(s) {
    return h(
        'tr',
        { dataset: { role: s.Role, state: s.State } },
        h('th', { scope: 'row' }, `${who(s)} #${s.Session}`),
        h('td', { 'data-label': 'State', class: 'state' }, s.State === 'ACTIVE' ? `${s.State} (${(s.States && s.States.connection) || '?'})` : s.State),
        h('td', { 'data-label': 'Selected pair', class: 'pair' }, s.SelectedPair || '—'),
        h('td', { 'data-label': 'Bitrate' }, typeof s.BitrateKbps === 'number' ? `${Math.round(s.BitrateKbps)} kbit/s` : '—'),
        h('td', { 'data-label': 'Loss' }, loss(s.Counts)),
        h('td', { 'data-label': 'Keyframes' }, keyframeInterval(s)),
        h('td', { 'data-label': 'Verdict', class: 'verdict' }, s.Verdict || (s.State === 'ENDED' ? `ended: ${s.EndReason || ''}` : 'no problem seen')),
    );
}

export async function sessionsPage(ctx, channelName) {
    const { api } = ctx;
    const loaded = await loadChannels(ctx, 'Sessions', 'No signaling channels yet.');
    if (loaded === null) return;
    const { channels, status, pageError } = loaded;
    const select = h('select', { name: 'channel' }, channels.map((c) => h('option', { value: c.ChannelARN }, c.ChannelName)));
    const chosen = channels.find((c) => c.ChannelName === channelName);
    if (chosen) select.value = chosen.ChannelARN;
    const refresh = h('button', { type: 'submit' }, 'Refresh');
    const error = errorSlot();
    const form = h('form', { class: 'inline-form', 'aria-label': 'Choose a channel' }, field('Channel', select), refresh, error);
    const connected = h('p', { class: 'connected', 'aria-live': 'polite' });
    const body = h('div', { class: 'scroll' });
    const updated = h('p', { class: 'hint' });

    const load = () =>
        busy(refresh, error, async () => {
            const sessions = await api.describeStorageSessions(select.value);
            const active = sessions.filter((s) => s.State === 'ACTIVE');
            const master = active.find((s) => s.Role === 'MASTER');
            const viewers = active.filter((s) => s.Role !== 'MASTER');
            connected.textContent =
                `Connected: ${master ? `master (${(master.States && master.States.connection) || 'connecting'})` : 'no master'}, ` +
                `${viewers.length} viewer${viewers.length === 1 ? '' : 's'}` +
                (viewers.length ? ` (${viewers.map((v) => v.ClientId || '?').join(', ')})` : '') +
                '.';
            body.replaceChildren(
                sessions.length
                    ? h(
                          'table',
                          { 'aria-label': 'Storage sessions' },
                          h(
                              'thead',
                              {},
                              h('tr', {}, ['Session', 'State', 'Selected pair', 'Bitrate', 'Loss', 'Keyframes', 'Verdict'].map((t) => h('th', { scope: 'col' }, t))),
                          ),
                          h('tbody', {}, sessions.map(sessionRow)),
                      )
                    : h('p', { class: 'empty' }, 'No storage sessions on this channel yet.'),
            );
            updated.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${REFRESH_MS / 1000} s.`;
        });
    form.addEventListener('submit', (event) => {
        event.preventDefault();
        load();
    });
    select.addEventListener('change', load);
    status.textContent = 'Storage sessions of a channel: the current ones first, then recently ended ones.';
    ctx.render('Sessions', status, pageError, h('section', { 'aria-label': 'Storage sessions' }, form, connected, body, updated));
    const timer = setInterval(() => {
        if (!refresh.disabled) load();
    }, REFRESH_MS);
    ctx.onLeave(() => clearInterval(timer));
    await load();
}
