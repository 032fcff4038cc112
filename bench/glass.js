// Glass-to-glass latency in headless Chromium: one browser, one page per player configuration
// (hls.js with and without lowLatencyMode, tests/playback/js/player.html), all playing the same
// LIVE session side by side. Every 100 ms each page samples, in one tick, Date.now() and the
// program date time of the frame at the playhead (hls.playingDate: currentTime mapped through
// EXT-X-PROGRAM-DATE-TIME), hls.js's own latency estimate and the video's state; 'waiting' and
// 'playing' events are noted with Date.now(). Runs until every page has played for
// warmup + measure seconds (or the deadline), then prints one JSON object.
//
// Usage: node bench/glass.js '{"pages": {"ll": "<url>", "plain": "<url>"}, "warmup": 3,
//                              "measure": 20, "deadline": 60}'
'use strict';

const { launch } = require('../tests/js/chromium.js');

const cfg = JSON.parse(process.argv[2]);

function sampler() {
    const g = { samples: [], events: [], firstPlaying: null, opened: Date.now() };
    window.__glass = g;
    for (const kind of ['waiting', 'playing']) {
        // Media events do not bubble; a capturing listener on window sees them all.
        window.addEventListener(kind, (e) => {
            const now = Date.now();
            if (kind === 'playing' && g.firstPlaying === null) g.firstPlaying = now;
            g.events.push({ kind, now, currentTime: e.target.currentTime });
        }, true);
    }
    setInterval(() => {
        const hls = window.player;
        const video = document.getElementById('video');
        if (!hls || !video) return;
        const date = hls.playingDate;
        g.samples.push({
            now: Date.now(),
            pdt: date ? date.getTime() : null,
            currentTime: video.currentTime,
            hlsLatency: typeof hls.latency === 'number' && Number.isFinite(hls.latency) ? hls.latency : null,
            targetLatency: typeof hls.targetLatency === 'number' ? hls.targetLatency : null,
            buffered: video.buffered.length ? video.buffered.end(video.buffered.length - 1) - video.currentTime : 0,
            paused: video.paused,
            readyState: video.readyState,
        });
    }, 100);
}

(async () => {
    const result = { pages: {}, pageErrors: [] };
    const browser = await launch();
    try {
        const pages = {};
        for (const [name, url] of Object.entries(cfg.pages)) {
            const page = await browser.newPage();
            page.on('pageerror', (e) => result.pageErrors.push(`${name}: ${String(e).slice(0, 300)}`));
            await page.addInitScript(sampler);
            await page.goto(url);
            pages[name] = page;
        }
        const span = (cfg.warmup + cfg.measure) * 1000;
        const deadline = Date.now() + cfg.deadline * 1000;
        while (Date.now() < deadline) {
            await new Promise((r) => setTimeout(r, 250));
            let done = true;
            for (const page of Object.values(pages)) {
                const first = await page.evaluate(() => window.__glass.firstPlaying);
                if (first === null || Date.now() < first + span) done = false;
            }
            if (done) break;
        }
        for (const [name, page] of Object.entries(pages)) {
            result.pages[name] = await page.evaluate(() => ({
                ...window.__glass,
                errors: window.playerState().errors,
            }));
        }
    } catch (e) {
        result.fatal = String(e);
    } finally {
        await browser.close();
    }
    process.stdout.write(JSON.stringify(result));
})();
