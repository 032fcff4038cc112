// Drive the console's Live, Sessions and settings pages in headless Chromium, by the accessible
// names of their controls, while a synthetic camera is the channel's master. Prints one JSON
// object with what each step saw; screenshots of each page at 1280 and 375 px go to cfg.shots.
//
// Usage: node console_live.js '<json config>'
//   {url, shots, keys: [akid, secret], limited: [akid, secret], channel, stream,
//    shiftRequest, shiftDone}: after the first watch the script creates the file shiftRequest
//   and waits for shiftDone (the test has set the camera's clock behind), then watches again.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { launch } = require('../../js/chromium.js');

const cfg = JSON.parse(process.argv[2]);
const result = { steps: {}, consoleErrors: [], pageErrors: [], shots: [] };
const WIDTHS = [1280, 375];

async function shoot(page, name) {
    for (const width of WIDTHS) {
        await page.setViewportSize({ width, height: width === 375 ? 812 : 900 });
        await page.waitForTimeout(200);
        const file = path.join(cfg.shots, `${name}-${width}.png`);
        await page.screenshot({ path: file, fullPage: true });
        result.shots.push(file);
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        result.steps[`overflow-${name}-${width}`] = overflow;
    }
    await page.setViewportSize({ width: 1280, height: 900 });
}

async function signIn(page, keys = cfg.keys) {
    await page.getByLabel('Access key ID').fill(keys[0]);
    await page.getByLabel('Secret access key').fill(keys[1]);
    await page.getByRole('button', { name: 'Sign in' }).click();
}

async function alertText(locator) {
    await locator.waitFor({ state: 'visible', timeout: 15000 });
    return (await locator.textContent()).trim();
}

async function readouts(page) {
    return page.evaluate(() => {
        const out = {};
        for (const dd of document.querySelectorAll('dd[data-readout]')) out[dd.dataset.readout] = dd.textContent.trim();
        return out;
    });
}

async function waitForFile(file, ms) {
    const deadline = Date.now() + ms;
    while (!fs.existsSync(file)) {
        if (Date.now() > deadline) throw new Error(`${file} did not appear`);
        await new Promise((resolve) => setTimeout(resolve, 100));
    }
}

// The capture → display latency readout (ms), once shown, then `n` more samples a second apart.
async function latencySamples(page, n = 5) {
    await page.waitForFunction(
        () => /^-?\d+ ms$/.test(document.querySelector('dd[data-readout="latency"]')?.textContent || ''),
        null,
        { timeout: 30000 },
    );
    const samples = [];
    for (let i = 0; i < n; i++) {
        await page.waitForTimeout(1000);
        const text = await page.getByLabel('Latency (capture → display)').textContent();
        samples.push(Number(/^(-?\d+) ms$/.exec(text.trim())[1]));
    }
    return samples;
}

// The value shown for `label` in the page's facts (or whether it is `expected`, when given).
const FACT = ([label, expected]) => {
    const dt = Array.from(document.querySelectorAll('.facts dt')).find((d) => d.textContent === label);
    const value = dt ? dt.nextElementSibling.textContent : null;
    return expected === undefined ? value : value === expected;
};

async function tagRows(page) {
    return page.evaluate(() =>
        Array.from(document.querySelectorAll('table[aria-label="Tags"] tbody tr'), (tr) => [
            tr.querySelector('th').textContent,
            tr.querySelector('td.value').textContent,
        ]),
    );
}

async function main() {
    const browser = await launch();
    const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on('console', (m) => {
        if (m.type() === 'error') result.consoleErrors.push(m.text().slice(0, 300));
    });
    page.on('pageerror', (e) => result.pageErrors.push(String(e).slice(0, 300)));
    page.on('dialog', (d) => d.accept());
    const steps = result.steps;
    try {
        await page.goto(cfg.url);
        await signIn(page);
        await page.getByRole('heading', { name: 'Signaling channels' }).waitFor();

        // Live, reached from the channel's row; talk-back is off until asked for.
        await page.getByRole('link', { name: `Watch ${cfg.channel} live`, exact: true }).click();
        await page.getByRole('heading', { name: 'Live' }).waitFor();
        const talk = page.getByLabel('Talk back (send my microphone)');
        await talk.waitFor();
        steps.talkBackDefault = await talk.isChecked();
        steps.latencyExplained = (await page.locator('.hint').allTextContents()).join(' ');
        // By keyboard: from the channel list, Tab to the talk-back box and to Watch, then Enter.
        await page.getByLabel('Channel', { exact: true }).focus();
        steps.liveTabStops = [];
        for (let i = 0; i < 2; i++) {
            await page.keyboard.press('Tab');
            steps.liveTabStops.push(
                await page.evaluate(() => {
                    const el = document.activeElement;
                    return el.labels && el.labels.length && el.type === 'checkbox' ? el.labels[0].textContent : el.textContent.trim();
                }),
            );
        }
        await page.keyboard.press('Enter');
        await page.waitForFunction(() => {
            const v = document.querySelector('video');
            return v && v.videoWidth > 0 && v.currentTime > 0.5;
        }, null, { timeout: 60000 });
        const t0 = await page.evaluate(() => document.querySelector('video').currentTime);
        await page.waitForTimeout(2500);
        steps.video = await page.evaluate((start) => {
            const v = document.querySelector('video');
            const canvas = document.createElement('canvas');
            canvas.width = v.videoWidth;
            canvas.height = v.videoHeight;
            const g = canvas.getContext('2d');
            g.drawImage(v, 0, 0);
            const px = g.getImageData(0, 0, canvas.width, canvas.height).data;
            let sum = 0;
            let sq = 0;
            const n = px.length / 4;
            for (let i = 0; i < px.length; i += 4) {
                const y = 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
                sum += y;
                sq += y * y;
            }
            const mean = sum / n;
            return { width: v.videoWidth, height: v.videoHeight, advanced: v.currentTime - start, variance: sq / n - mean * mean };
        }, t0);
        await page.waitForFunction(
            () => ['bitrate', 'resolution', 'fps', 'latency', 'delay'].every((k) => {
                const t = document.querySelector(`dd[data-readout="${k}"]`)?.textContent;
                return t && t !== '—';
            }),
            null,
            { timeout: 20000 },
        );
        const all = await readouts(page);
        steps.readouts = { bitrate: all.bitrate, resolution: all.resolution, fps: all.fps, latency: all.latency, delay: all.delay };
        steps.latencySamples = await latencySamples(page);
        steps.talkOff = all.talk;
        await shoot(page, 'live');
        // Talk-back on while watching: the microphone's packets go out on the same connection.
        await talk.check();
        await page.waitForFunction(() => {
            const m = /^on: (\d+)/.exec(document.querySelector('dd[data-readout="talk"]').textContent);
            return m && Number(m[1]) > 0;
        }, null, { timeout: 20000 });
        steps.talkBackPackets = Number(/^on: (\d+)/.exec((await readouts(page)).talk)[1]);
        await talk.uncheck();
        // While watching, the channel's Sessions page (another tab) lists this viewer.
        const other = await context.newPage();
        other.on('pageerror', (e) => result.pageErrors.push(String(e).slice(0, 300)));
        await other.goto(`${cfg.url}#/sessions/${encodeURIComponent(cfg.channel)}`);
        await signIn(other);
        await other.getByRole('heading', { name: 'Sessions' }).waitFor();
        await other.waitForFunction(() => /1 viewer \(console-/.test(document.querySelector('.connected')?.textContent || ''), null, { timeout: 15000 });
        steps.connectedWhileWatching = (await other.locator('.connected').textContent()).trim();
        await other.close();
        await page.getByRole('button', { name: 'Stop' }).click();
        steps.latencyAfterStop = (await readouts(page)).latency;
        // The camera's clock set behind (its sender reports say so): watched again, the
        // capture → display latency grows by as much.
        fs.writeFileSync(cfg.shiftRequest, '');
        await waitForFile(cfg.shiftDone, 15000);
        await page.waitForTimeout(2500); // a sender report of the camera's new clock
        await page.getByRole('button', { name: 'Watch' }).click();
        steps.latencyShiftedSamples = await latencySamples(page);
        await page.getByRole('button', { name: 'Stop' }).click();

        // Sessions: the master's session, connected, with its selected pair.
        await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Sessions' }).click();
        await page.getByRole('heading', { name: 'Sessions' }).waitFor();
        await page.getByLabel('Channel', { exact: true }).selectOption({ label: cfg.channel });
        await page.locator('tr[data-role="MASTER"][data-state="ACTIVE"]').waitFor({ timeout: 15000 });
        steps.masterRow = await page.evaluate(() => {
            const tr = document.querySelector('tr[data-role="MASTER"][data-state="ACTIVE"]');
            return {
                state: tr.querySelector('.state').textContent,
                pair: tr.querySelector('.pair').textContent,
                verdict: tr.querySelector('.verdict').textContent,
            };
        });
        steps.connected = (await page.locator('.connected').textContent()).trim();
        const viewer = page.locator('tr[data-role="VIEWER"] th').first();
        await viewer.waitFor({ timeout: 15000 });
        steps.viewerRow = (await viewer.textContent()).trim();
        await shoot(page, 'sessions');

        // The channel's settings: a TTL the service refuses, then one it takes; a tag round trip.
        await page.goto(`${cfg.url}#/`);
        await page.getByRole('link', { name: `Settings and tags of ${cfg.channel}`, exact: true }).click();
        await page.getByRole('heading', { name: `Channel ${cfg.channel}` }).waitFor();
        const settings = page.getByRole('form', { name: 'Channel settings' });
        await settings.getByLabel('Message TTL (seconds)').fill('1000');
        await settings.getByRole('button', { name: 'Save' }).click();
        steps.badTtl = await alertText(settings.getByRole('alert'));
        await settings.getByLabel('Message TTL (seconds)').fill('90');
        await settings.getByRole('button', { name: 'Save' }).click();
        await page.waitForFunction(FACT, ['Message TTL', '90 s'], { timeout: 15000 });
        steps.ttlShown = await page.evaluate(FACT, ['Message TTL']);
        let tags = page.getByRole('form', { name: 'Add tag' });
        await tags.getByLabel('Tag key').fill('site');
        await tags.getByLabel('Tag value').fill('north');
        await tags.getByRole('button', { name: 'Add tag' }).click();
        await page.getByRole('button', { name: 'Remove tag site' }).waitFor({ timeout: 15000 });
        steps.channelTagsAfterAdd = await tagRows(page);
        tags = page.getByRole('form', { name: 'Add tag' });
        await tags.getByLabel('Tag key').fill('bad!key');
        await tags.getByLabel('Tag value').fill('x');
        await tags.getByRole('button', { name: 'Add tag' }).click();
        steps.badTag = await alertText(tags.getByRole('alert'));
        await shoot(page, 'channel-settings');
        await page.getByRole('button', { name: 'Remove tag site' }).click();
        await page.getByText('No tags.').waitFor({ timeout: 15000 });
        steps.channelTagsAfterRemove = await tagRows(page);

        // The stream's settings: retention raised (UpdateDataRetention), a tag added.
        await page.goto(`${cfg.url}#/`);
        await page.getByRole('link', { name: `Settings and tags of ${cfg.stream}`, exact: true }).click();
        await page.getByRole('heading', { name: `Stream ${cfg.stream}` }).waitFor();
        const streamSettings = page.getByRole('form', { name: 'Stream settings' });
        await streamSettings.getByLabel('Data retention (hours)').fill('72');
        await streamSettings.getByRole('button', { name: 'Save' }).click();
        await page.waitForFunction(FACT, ['Data retention', '72 h'], { timeout: 15000 });
        tags = page.getByRole('form', { name: 'Add tag' });
        await tags.getByLabel('Tag key').fill('owner');
        await tags.getByLabel('Tag value').fill('ops');
        await tags.getByRole('button', { name: 'Add tag' }).click();
        await page.getByRole('button', { name: 'Remove tag owner' }).waitFor({ timeout: 15000 });
        steps.streamTagsAfterAdd = await tagRows(page);
        await shoot(page, 'stream-settings');

        // A key whose policy denies DescribeStorageSessions sees the refusal on the Sessions page.
        await page.getByRole('button', { name: 'Sign out' }).click();
        await signIn(page, cfg.limited);
        await page.getByRole('heading', { name: 'Signaling channels' }).waitFor();
        await page.goto(`${cfg.url}#/sessions/${encodeURIComponent(cfg.channel)}`);
        await page.getByRole('heading', { name: 'Sessions' }).waitFor();
        steps.sessionsDenied = await alertText(page.getByRole('form', { name: 'Choose a channel' }).getByRole('alert'));
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
