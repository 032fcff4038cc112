// Recordings: the fragments of a time window (ListFragments, paged), their gaps, playback with
// hls.js (ON_DEMAND of the range; LIVE_REPLAY from a chosen time when the range reaches now;
// LIVE at the stream's newest fragments) and a clip download (GetClip).
import Hls from 'hls.js';
import { busy, errorSlot, field, h, showError } from './dom.js';

const WINDOWS = [
    [5, 'Last 5 minutes'],
    [15, 'Last 15 minutes'],
    [60, 'Last hour'],
    [360, 'Last 6 hours'],
];

function fmt(date) {
    return date.toLocaleString(undefined, { hour12: false });
}

function gapsOf(fragments) {
    // A gap: more than a second between one fragment's end and the next one's start.
    const gaps = [];
    for (let i = 1; i < fragments.length; i++) {
        const prev = fragments[i - 1];
        const end = prev.ProducerTimestamp.getTime() + prev.FragmentLengthInMilliseconds;
        const next = fragments[i].ProducerTimestamp.getTime();
        if (next - end > 1000) gaps.push([end, next]);
    }
    return gaps;
}

async function streamList(ctx) {
    const streams = await ctx.api.listStreams();
    ctx.render(
        'Recordings',
        streams.length
            ? h('ul', { class: 'streams' }, streams.map((s) => h('li', {}, h('a', { href: `#/recordings/${encodeURIComponent(s.StreamName)}` }, s.StreamName))))
            : h('p', { class: 'empty' }, 'No streams yet.'),
    );
}

export async function recordingsPage(ctx, streamName) {
    if (!streamName) {
        try {
            return await streamList(ctx);
        } catch (err) {
            if (ctx.expired(err)) return undefined;
            const slot = errorSlot();
            ctx.render('Recordings', slot);
            return showError(slot, err);
        }
    }
    const { api } = ctx;
    const windowSelect = h('select', { name: 'window' }, WINDOWS.map(([m, label]) => h('option', { value: String(m) }, label)));
    const refresh = h('button', { type: 'button' }, 'Refresh');
    const error = errorSlot();
    const facts = h('dl', { class: 'facts' });
    const thumbs = h('ul', { class: 'thumbs', 'aria-label': 'Thumbnails' });
    const timeline = h('div', { class: 'timeline', role: 'img', 'aria-label': 'Recorded fragments' });
    const video = h('video', { controls: true, muted: true, playsinline: true, 'aria-label': `Recording of ${streamName}` });
    const scrub = h('input', { type: 'range', name: 'position', min: '0', max: '0', step: '0.1', value: '0', disabled: true });
    const position = h('output', {}, '');
    const play = h('button', { type: 'button' }, 'Play');
    const jumpLive = h('button', { type: 'button' }, 'Jump to live');
    const mode = h('output', { class: 'mode', 'aria-label': 'Playback mode', 'aria-live': 'polite' }, 'Stopped');
    const download = h('button', { type: 'button' }, 'Download clip');
    const clipProgress = h('output', { 'aria-label': 'Clip download', 'aria-live': 'polite' }, '');
    const playError = errorSlot();
    let hls = null;
    let range = null;
    let reachesNow = false;
    let windowOf = null; // the listed window: {start, span}, to map a timeline click to a time
    let playing = 'ON_DEMAND';
    const stopPlayer = () => {
        if (hls) hls.destroy();
        hls = null;
    };
    ctx.render(
        `Recordings of ${streamName}`,
        h('p', {}, h('a', { href: '#/recordings' }, 'All streams')),
        h(
            'section',
            { 'aria-labelledby': 'h-fragments' },
            h('h2', { id: 'h-fragments' }, 'Fragments'),
            h('div', { class: 'inline-form' }, field('Time window', windowSelect), refresh),
            error,
            timeline,
            facts,
            thumbs,
        ),
        h(
            'section',
            { 'aria-labelledby': 'h-player' },
            h('h2', { id: 'h-player' }, 'Playback'),
            video,
            h('div', { class: 'scrub' }, field('Position (seconds)', scrub), position),
            h('p', {}, 'Mode: ', mode),
            h('div', { class: 'inline-form' }, play, jumpLive, download, clipProgress),
            playError,
        ),
    );
    ctx.onLeave(stopPlayer);

    async function load() {
        const minutes = Number(windowSelect.value);
        const end = new Date();
        const start = new Date(end.getTime() - minutes * 60000);
        facts.replaceChildren(h('dt', {}, 'Status'), h('dd', {}, 'Listing fragments…'));
        timeline.replaceChildren();
        const fragments = await api.listFragments(streamName, start, end);
        fragments.sort((a, b) => a.ProducerTimestamp - b.ProducerTimestamp);
        const gaps = gapsOf(fragments);
        const span = end - start;
        windowOf = { start, span };
        for (const f of fragments) {
            const left = ((f.ProducerTimestamp - start) / span) * 100;
            const width = Math.max((f.FragmentLengthInMilliseconds / span) * 100, 0.2);
            timeline.append(h('div', { class: 'span', style: { left: `${left.toFixed(3)}%`, width: `${width.toFixed(3)}%` } }));
        }
        const seconds = fragments.reduce((sum, f) => sum + f.FragmentLengthInMilliseconds, 0) / 1000;
        range = fragments.length
            ? { start: fragments[0].ProducerTimestamp, end: new Date(fragments.at(-1).ProducerTimestamp.getTime() + fragments.at(-1).FragmentLengthInMilliseconds) }
            : null;
        // The range reaches now when its last fragment ended less than 30 s before the listing:
        // a chosen time then plays as LIVE_REPLAY, which goes on past the range's end.
        reachesNow = Boolean(range) && end - range.end < 30000;
        facts.replaceChildren(
            h('dt', {}, 'Fragments'),
            h('dd', { 'data-fragments': String(fragments.length) }, String(fragments.length)),
            h('dt', {}, 'Recorded'),
            h('dd', {}, `${seconds.toFixed(1)} s`),
            h('dt', {}, 'First'),
            h('dd', {}, range ? fmt(range.start) : '—'),
            h('dt', {}, 'Last'),
            h('dd', {}, range ? fmt(range.end) : '—'),
            h('dt', {}, 'Gaps'),
            h('dd', {}, gaps.length ? gaps.map(([a, b]) => `${fmt(new Date(a))} (${((b - a) / 1000).toFixed(1)} s)`).join(', ') : 'none'),
        );
        play.disabled = download.disabled = !range;
        thumbs.replaceChildren();
        if (range) showThumbnails(range).catch((err) => thumbs.replaceChildren(h('li', { class: 'error' }, `Thumbnails: ${err.name}: ${err.message}`)));
        scrub.max = range ? String((range.end - range.start) / 1000) : '0';
        scrub.disabled = true; // until the player has the range
    }

    // GetImages: a strip of thumbnails; choosing one plays from its time.
    async function showThumbnails(r) {
        const images = await api.thumbnails(streamName, r.start, r.end, 8);
        thumbs.replaceChildren(
            ...images.map((image) => {
                const at = image.TimeStamp;
                const button = h(
                    'button',
                    { type: 'button', class: 'thumb', 'aria-label': `Play from ${fmt(at)}`, 'data-at': String(at.getTime()) },
                    h('img', { src: `data:image/jpeg;base64,${image.ImageContent}`, alt: '', width: '160' }),
                    h('span', {}, at.toLocaleTimeString(undefined, { hour12: false })),
                );
                button.addEventListener('click', () =>
                    busy(button, playError, async () => {
                        if (reachesNow) return startPlayer('LIVE_REPLAY', at);
                        if (!hls || playing !== 'ON_DEMAND') await startPlayer();
                        return seekTo((at - range.start) / 1000);
                    }),
                );
                return h('li', {}, button);
            }),
        );
    }

    async function seekTo(seconds) {
        if (video.readyState < 1) await new Promise((resolve) => video.addEventListener('loadedmetadata', resolve, { once: true }));
        video.currentTime = Math.max(0, seconds);
    }

    const showPosition = () => {
        if (!range) return;
        // LIVE and LIVE_REPLAY: the wall-clock time of the played frame, from the playlist's
        // EXT-X-PROGRAM-DATE-TIME (the fragments' producer timestamps).
        const at = playing === 'ON_DEMAND' ? new Date(range.start.getTime() + Number(scrub.value) * 1000) : hls && hls.playingDate;
        if (!at) return;
        position.textContent = fmt(at);
        position.dataset.at = String(at.getTime());
    };
    video.addEventListener('timeupdate', () => {
        if (document.activeElement !== scrub) scrub.value = String(video.currentTime);
        showPosition();
    });
    // Scrub: the slider (mouse, touch or arrow keys) seeks the player within the range.
    scrub.addEventListener('input', () => {
        video.currentTime = Number(scrub.value);
        showPosition();
    });

    // A click on the timeline plays from that time: LIVE_REPLAY when the range reaches now,
    // else a seek in the range (the thumbnails and the slider do the same from the keyboard).
    timeline.addEventListener('click', (event) => {
        if (!range || !windowOf) return;
        const box = timeline.getBoundingClientRect();
        const at = new Date(windowOf.start.getTime() + ((event.clientX - box.left) / box.width) * windowOf.span);
        if (at < range.start || at > range.end) return;
        busy(play, playError, async () => {
            if (reachesNow) return startPlayer('LIVE_REPLAY', at);
            if (!hls || playing !== 'ON_DEMAND') await startPlayer();
            return seekTo((at - range.start) / 1000);
        });
    });
    refresh.addEventListener('click', () => busy(refresh, error, load));
    windowSelect.addEventListener('change', () => busy(refresh, error, load));
    async function startPlayer(wanted = 'ON_DEMAND', from = null) {
        if (wanted !== 'LIVE' && !range) return;
        const url =
            wanted === 'LIVE'
                ? await api.hlsUrl(streamName, null, null, 'LIVE')
                : wanted === 'LIVE_REPLAY'
                  ? await api.hlsUrl(streamName, from, null, 'LIVE_REPLAY')
                  : await api.hlsUrl(streamName, range.start, range.end);
        stopPlayer();
        playing = wanted;
        mode.textContent = wanted === 'LIVE_REPLAY' ? `LIVE_REPLAY from ${fmt(from)}` : wanted === 'LIVE' ? 'LIVE (newest fragments)' : 'ON_DEMAND (the listed range)';
        mode.dataset.mode = wanted;
        if (from) mode.dataset.from = String(from.getTime());
        else delete mode.dataset.from;
        position.textContent = '';
        delete position.dataset.at;
        if (!Hls.isSupported()) throw new Error('This browser cannot play HLS (no Media Source Extensions).');
        // LIVE_REPLAY's playlist is live (no end) but starts at the chosen time: play it from its
        // first fragment, not from hls.js's default of near its newest.
        hls = new Hls(wanted === 'LIVE_REPLAY' ? { startPosition: 0 } : {});
        hls.on(Hls.Events.ERROR, (_event, data) => {
            if (data.fatal) showError(playError, new Error(`Playback failed: ${data.type} ${data.details}`));
        });
        hls.loadSource(url);
        hls.attachMedia(video);
        // The slider scrubs the listed range: only in ON_DEMAND.
        scrub.disabled = wanted !== 'ON_DEMAND';
        await video.play().catch(() => {});
    }
    play.addEventListener('click', () => busy(play, playError, () => startPlayer()));
    jumpLive.addEventListener('click', () => busy(jumpLive, playError, () => startPlayer('LIVE')));
    download.addEventListener('click', () =>
        busy(download, playError, async () => {
            if (!range) return;
            const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;
            clipProgress.textContent = 'Preparing the clip…';
            let blob;
            try {
                blob = await api.clip(streamName, range.start, range.end, (received) => {
                    clipProgress.textContent = `Downloading: ${mb(received)}`;
                });
            } catch (err) {
                clipProgress.textContent = '';
                throw err;
            }
            clipProgress.textContent = `Downloaded ${mb(blob.size)}`;
            const url = URL.createObjectURL(blob);
            const stamp = range.start.toISOString().replace(/[:.]/g, '-');
            const a = h('a', { href: url, download: `${streamName}-${stamp}.mp4` });
            document.body.append(a);
            a.click();
            a.remove();
            setTimeout(() => URL.revokeObjectURL(url), 60000);
        }),
    );
    try {
        await load();
    } catch (err) {
        if (!ctx.expired(err)) showError(error, err);
    }
    return undefined;
}
