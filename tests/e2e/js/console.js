// Drive the web console (served by openkvs at /console/) in headless Chromium, the way a person
// does: by the accessible names of its fields and buttons. Prints one JSON object with what each
// step saw; screenshots of each page at 1280 and 375 px go to cfg.shots.
//
// Usage: node console.js '<json config>'
//   {url, shots, downloads, keys: [akid, secret], limited: [akid, secret], channel, stream,
//    recorded}
'use strict';

const path = require('node:path');
const { launch } = require('../../js/chromium.js');

const cfg = JSON.parse(process.argv[2]);
const result = { steps: {}, consoleErrors: [], pageErrors: [], shots: [] };
const WIDTHS = [1280, 375];

async function shoot(page, name) {
    for (const width of WIDTHS) {
        await page.setViewportSize({ width, height: width === 375 ? 812 : 900 });
        const file = path.join(cfg.shots, `${name}-${width}.png`);
        await page.screenshot({ path: file, fullPage: true });
        result.shots.push(file);
        // Responsive: nothing wider than the viewport.
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        result.steps[`overflow-${name}-${width}`] = overflow;
    }
    await page.setViewportSize({ width: 1280, height: 900 });
}

async function signIn(page, akid, secret) {
    await page.getByLabel('Access key ID').fill(akid);
    await page.getByLabel('Secret access key').fill(secret);
    await page.getByRole('button', { name: 'Sign in' }).click();
}

async function alertText(locator) {
    await locator.waitFor({ state: 'visible', timeout: 15000 });
    return (await locator.textContent()).trim();
}

async function main() {
    const browser = await launch();
    const context = await browser.newContext({ ignoreHTTPSErrors: true, acceptDownloads: true, viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on('console', (m) => {
        if (m.type() === 'error') result.consoleErrors.push(m.text().slice(0, 300));
    });
    page.on('pageerror', (e) => result.pageErrors.push(String(e).slice(0, 300)));
    page.on('dialog', (d) => d.accept());
    try {
        await page.goto(cfg.url);
        await page.getByRole('heading', { name: 'Sign in' }).waitFor();
        await shoot(page, 'sign-in');

        // A wrong secret: the service's error, in words, on the sign-in form.
        await signIn(page, cfg.keys[0], 'not-the-secret');
        result.steps.wrongSecret = await alertText(page.locator('form').getByRole('alert'));
        result.steps.stillSignIn = await page.getByRole('button', { name: 'Sign in' }).isVisible();
        result.steps.storedAfterFailure = await page.evaluate(() => sessionStorage.length);
        await shoot(page, 'sign-in-error');

        // An unknown access key ID: the service says so.
        await signIn(page, 'AKIAUNKNOWN000000000', cfg.keys[1]);
        await page.waitForFunction(() => /UnrecognizedClient/.test(document.querySelector('form [role=alert]').textContent), null, { timeout: 15000 });
        result.steps.unknownKey = await alertText(page.locator('form').getByRole('alert'));

        // The right keys: the home page lists channels and streams.
        await signIn(page, cfg.keys[0], cfg.keys[1]);
        await page.getByRole('heading', { name: 'Channels and streams' }).waitFor();
        await page.getByRole('heading', { name: 'Signaling channels' }).waitFor();
        result.steps.stored = await page.evaluate(() => Object.keys(sessionStorage));
        result.steps.secretInStorage = await page.evaluate((s) => JSON.stringify(sessionStorage).includes(s), cfg.keys[1]);
        result.steps.preexisting = await page.locator('tbody th').allTextContents();

        // An invalid name: the service's validation error inline, under the form.
        const channelForm = page.getByRole('form', { name: 'Create signaling channel' });
        await channelForm.getByLabel('Channel name').fill('bad name!');
        await channelForm.getByRole('button', { name: 'Create channel' }).click();
        result.steps.invalidChannel = await alertText(channelForm.getByRole('alert'));

        // Create a channel and a stream, and link them.
        await channelForm.getByLabel('Channel name').fill(cfg.channel);
        await channelForm.getByRole('button', { name: 'Create channel' }).click();
        await page.getByRole('table', { name: 'Signaling channels' }).getByRole('rowheader', { name: cfg.channel }).waitFor();
        const streamForm = page.getByRole('form', { name: 'Create stream' });
        await streamForm.getByLabel('Stream name').fill(cfg.stream);
        await streamForm.getByLabel('Data retention (hours)').fill('48');
        await streamForm.getByRole('button', { name: 'Create stream' }).click();
        await page.getByRole('table', { name: 'Streams' }).getByRole('rowheader', { name: cfg.stream }).waitFor();
        const storageForm = page.getByRole('form', { name: 'Media storage' });
        await storageForm.getByLabel('Channel').selectOption({ label: cfg.channel });
        result.steps.storageBefore = await storageForm.getByLabel('Stream').inputValue();
        await storageForm.getByLabel('Stream').selectOption({ label: cfg.stream });
        await storageForm.getByRole('button', { name: 'Save media storage' }).click();
        const linked = page.locator(`tr[data-channel="${cfg.channel}"] td.storage`);
        await page.waitForFunction(
            ([c, s]) => document.querySelector(`tr[data-channel="${c}"] td.storage`)?.textContent === s,
            [cfg.channel, cfg.stream],
            { timeout: 15000 },
        );
        result.steps.linked = await linked.textContent();
        result.steps.storageAfter = await page.getByRole('form', { name: 'Media storage' }).getByLabel('Stream').evaluate((e) => e.selectedOptions[0].textContent);
        result.steps.channels = await page.getByRole('table', { name: 'Signaling channels' }).locator('tbody th').allTextContents();
        result.steps.streams = await page.getByRole('table', { name: 'Streams' }).locator('tbody th').allTextContents();
        await shoot(page, 'home');

        // Keyboard: Tab from the top of a fresh page reaches the skip link and the navigation.
        await page.reload();
        await page.getByRole('heading', { name: 'Signaling channels' }).waitFor();
        result.steps.tabStops = [];
        for (let i = 0; i < 3; i++) {
            await page.keyboard.press('Tab');
            result.steps.tabStops.push(await page.evaluate(() => document.activeElement.textContent.trim()));
        }

        // Recordings of a stream with fragments: the timeline, playback and a clip download.
        await page.goto(`${cfg.url}#/recordings/${encodeURIComponent(cfg.recorded)}`);
        await page.getByRole('heading', { name: `Recordings of ${cfg.recorded}` }).waitFor();
        const count = page.locator('dd[data-fragments]');
        await count.waitFor({ timeout: 15000 });
        result.steps.fragments = Number(await count.getAttribute('data-fragments'));
        result.steps.timelineSpans = await page.locator('.timeline .span').count();
        const thumbs = page.getByRole('list', { name: 'Thumbnails' }).getByRole('button');
        await thumbs.first().waitFor({ timeout: 30000 });
        result.steps.thumbnails = await thumbs.count();
        result.steps.thumbnailWidths = await page.locator('.thumbs img').evaluateAll((imgs) => imgs.map((i) => i.naturalWidth));
        await page.getByRole('button', { name: 'Play', exact: true }).click();
        await page.waitForFunction(() => {
            const v = document.querySelector('video');
            return v && v.currentTime > 2;
        }, null, { timeout: 30000 });
        result.steps.video = await page.evaluate(() => {
            const v = document.querySelector('video');
            return { currentTime: v.currentTime, width: v.videoWidth, height: v.videoHeight };
        });
        // Scrub: seek into the middle of the recording and play from there.
        await page.getByLabel('Position (seconds)').fill('10');
        await page.waitForFunction(() => document.querySelector('video').currentTime >= 10 && !document.querySelector('video').seeking, null, { timeout: 20000 });
        result.steps.scrubbedTo = await page.evaluate(() => document.querySelector('video').currentTime);
        // ... and with the keyboard: Home goes back to the start of the range.
        await page.getByLabel('Position (seconds)').focus();
        await page.keyboard.press('Home');
        await page.waitForFunction(() => document.querySelector('video').currentTime < 3 && !document.querySelector('video').seeking, null, { timeout: 20000 });
        result.steps.scrubbedHome = await page.evaluate(() => document.querySelector('video').currentTime);
        result.steps.position = (await page.locator('.scrub output').textContent()).trim();
        // A thumbnail plays from its own time (the sixth: 7.5 s into the range).
        await thumbs.nth(5).click();
        await page.waitForFunction(() => document.querySelector('video').currentTime >= 7 && !document.querySelector('video').seeking, null, { timeout: 20000 });
        result.steps.thumbnailSeek = await page.evaluate(() => document.querySelector('video').currentTime);
        await shoot(page, 'recordings');
        const [download] = await Promise.all([
            page.waitForEvent('download', { timeout: 30000 }),
            page.getByRole('button', { name: 'Download clip' }).click(),
        ]);
        const clip = path.join(cfg.downloads, download.suggestedFilename());
        await download.saveAs(clip);
        result.steps.clip = clip;
        result.steps.clipProgress = (await page.getByLabel('Clip download').textContent()).trim();

        // Sign out; a key whose policy denies DeleteStream sees AccessDenied inline.
        await page.goto(cfg.url);
        await page.getByRole('button', { name: 'Sign out' }).click();
        await page.getByRole('button', { name: 'Sign in' }).waitFor();
        result.steps.storedAfterSignOut = await page.evaluate(() => sessionStorage.length);
        await signIn(page, cfg.limited[0], cfg.limited[1]);
        await page.getByRole('heading', { name: 'Channels and streams' }).waitFor();
        await page.getByRole('button', { name: `Delete stream ${cfg.stream}` }).click();
        const streams = page.getByRole('region', { name: 'Streams' });
        result.steps.denied = await alertText(streams.getByRole('alert'));
        result.steps.streamsAfterDenied = await page.getByRole('table', { name: 'Streams' }).locator('tbody th').allTextContents();
        await shoot(page, 'access-denied');
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
