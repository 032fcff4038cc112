// Recordings: the fragments of a time window (ListFragments, paged), their gaps, ON_DEMAND
// playback with hls.js and a clip download (GetClip).
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
    const download = h('button', { type: 'button' }, 'Download clip');
    const playError = errorSlot();
    let hls = null;
    let range = null;
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
            h('div', { class: 'inline-form' }, play, download),
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
        for (const f of fragments) {
            const left = ((f.ProducerTimestamp - start) / span) * 100;
            const width = Math.max((f.FragmentLengthInMilliseconds / span) * 100, 0.2);
            timeline.append(h('div', { class: 'span', style: { left: `${left.toFixed(3)}%`, width: `${width.toFixed(3)}%` } }));
        }
        const seconds = fragments.reduce((sum, f) => sum + f.FragmentLengthInMilliseconds, 0) / 1000;
        range = fragments.length
            ? { start: fragments[0].ProducerTimestamp, end: new Date(fragments.at(-1).ProducerTimestamp.getTime() + fragments.at(-1).FragmentLengthInMilliseconds) }
            : null;
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
                    { type: 'button', class: 'thumb', 'aria-label': `Play from ${fmt(at)}` },
                    h('img', { src: `data:image/jpeg;base64,${image.ImageContent}`, alt: '', width: '160' }),
                    h('span', {}, at.toLocaleTimeString(undefined, { hour12: false })),
                );
                button.addEventListener('click', () =>
                    busy(button, playError, async () => {
                        if (!hls) await startPlayer();
                        await seekTo((at - range.start) / 1000);
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
        position.textContent = fmt(new Date(range.start.getTime() + Number(scrub.value) * 1000));
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

    refresh.addEventListener('click', () => busy(refresh, error, load));
    windowSelect.addEventListener('change', () => busy(refresh, error, load));
    async function startPlayer() {
        if (!range) return;
        const url = await api.hlsUrl(streamName, range.start, range.end);
        stopPlayer();
        if (!Hls.isSupported()) throw new Error('This browser cannot play HLS (no Media Source Extensions).');
        hls = new Hls();
        hls.on(Hls.Events.ERROR, (_event, data) => {
            if (data.fatal) showError(playError, new Error(`Playback failed: ${data.type} ${data.details}`));
        });
        hls.loadSource(url);
        hls.attachMedia(video);
        scrub.disabled = false;
        await video.play().catch(() => {});
    }
    play.addEventListener('click', () => busy(play, playError, startPlayer));
    download.addEventListener('click', () =>
        busy(download, playError, async () => {
            if (!range) return;
            const bytes = await api.clip(streamName, range.start, range.end);
            const url = URL.createObjectURL(new Blob([bytes], { type: 'video/mp4' }));
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
