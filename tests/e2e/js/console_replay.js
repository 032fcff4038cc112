// Drive the console's Recordings page of a stream that is being recorded live, in headless
// Chromium: a thumbnail plays LIVE_REPLAY from its time, "Jump to live" plays LIVE. Prints one
// JSON object with what each step saw; a 1280x800 screenshot of the page goes to cfg.shots.
//
// Usage: node console_replay.js '<json config>'   {url, shots, keys: [akid, secret], stream}
'use strict';

const path = require('node:path');
const { launch } = require('../../js/chromium.js');

const cfg = JSON.parse(process.argv[2]);
const result = { steps: {}, consoleErrors: [], pageErrors: [], shots: [] };

// Wait until the video has played `seconds` past where it was, then read the mode and the
// wall-clock time of the played frame (hls.js's playingDate, shown next to the slider).
async function played(page, seconds) {
    const from = await page.evaluate(() => document.querySelector('video').currentTime);
    await page.waitForFunction(
        ([t, s]) => {
            const v = document.querySelector('video');
            return v.currentTime > t + s && document.querySelector('.scrub output').dataset.at;
        },
        [from, seconds],
        { timeout: 45000 },
    );
    return page.evaluate((t) => {
        const v = document.querySelector('video');
        return {
            advanced: v.currentTime - t,
            width: v.videoWidth,
            at: Number(document.querySelector('.scrub output').dataset.at),
            now: Date.now(),
            mode: document.querySelector('output.mode').dataset.mode,
            modeText: document.querySelector('output.mode').textContent,
            scrubDisabled: document.querySelector('input[name=position]').disabled,
        };
    }, from);
}

async function main() {
    const browser = await launch();
    const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    page.on('console', (m) => {
        if (m.type() === 'error') result.consoleErrors.push(m.text().slice(0, 300));
    });
    page.on('pageerror', (e) => result.pageErrors.push(String(e).slice(0, 300)));
    try {
        await page.goto(cfg.url);
        await page.getByLabel('Access key ID').fill(cfg.keys[0]);
        await page.getByLabel('Secret access key').fill(cfg.keys[1]);
        await page.getByRole('button', { name: 'Sign in' }).click();
        await page.getByRole('heading', { name: 'Channels and streams' }).waitFor();
        await page.goto(`${cfg.url}#/recordings/${encodeURIComponent(cfg.stream)}`);
        await page.getByRole('heading', { name: `Recordings of ${cfg.stream}` }).waitFor();
        const thumbs = page.getByRole('list', { name: 'Thumbnails' }).getByRole('button');
        await thumbs.first().waitFor({ timeout: 30000 });
        await page.waitForFunction(() => [...document.querySelectorAll('.thumbs img')].every((i) => i.complete && i.naturalWidth > 0), null, { timeout: 15000 });
        result.steps.thumbnails = await thumbs.count();
        result.steps.modeBefore = await page.getByLabel('Playback mode').textContent();
        const shot = path.join(cfg.shots, 'recordings-live-1280.png');
        await page.screenshot({ path: shot });
        result.shots.push(shot);

        // A thumbnail of a range that reaches now: LIVE_REPLAY from its time.
        const second = thumbs.nth(1);
        result.steps.replayFrom = Number(await second.getAttribute('data-at'));
        await second.click();
        result.steps.replay = await played(page, 3);

        // A click on the timeline (on its fourth fragment): LIVE_REPLAY from that time.
        await page.locator('.timeline .span').nth(3).click();
        await page.waitForFunction((t) => document.querySelector('output.mode').dataset.from && Number(document.querySelector('output.mode').dataset.from) !== t, result.steps.replayFrom, { timeout: 15000 });
        result.steps.timelineFrom = Number(await page.getByLabel('Playback mode').getAttribute('data-from'));
        result.steps.timeline = await played(page, 2);

        // Jump to live: LIVE, at the newest fragments.
        await page.getByRole('button', { name: 'Jump to live' }).click();
        await page.waitForFunction(() => document.querySelector('output.mode').dataset.mode === 'LIVE', null, { timeout: 15000 });
        result.steps.live = await played(page, 3);
    } catch (e) {
        result.fatal = String((e && e.stack) || e).slice(0, 3000);
        try {
            await page.screenshot({ path: path.join(cfg.shots, 'failure.png'), fullPage: true });
            result.html = (await page.content()).slice(0, 4000);
        } catch {
            // the page is gone
        }
    } finally {
        await browser.close();
    }
    process.stdout.write(JSON.stringify(result) + '\n');
}

main();
