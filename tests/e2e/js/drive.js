// Drive the customer app (app.html + the esbuild bundle) in headless Chromium through one story:
//   1. master A (fake camera + microphone) joins the storage session and streams;
//   2. a viewer joins a few seconds later, watches the live video and talks into its microphone;
//   3. after A has streamed `masterSeconds`, master B connects to the same channel; B's first offer
//      is dropped (fault injection), so B's app joins again after 6 s, as the JS sample does;
//   4. B streams `takeoverSeconds`.
// Each participant has its own browser context (its own fake devices). Prints one JSON object.
//
// Usage: node drive.js '<json config>'
//   {app, api: {endpoint, region, accessKeyId, secretAccessKey, channelName}, viewerId,
//    masterSeconds, viewerAfter, viewerSeconds, takeoverSeconds}
'use strict';

const { launch } = require('../../js/chromium.js');

const cfg = JSON.parse(process.argv[2]);
const result = { pages: {}, marks: {}, console: {}, pageErrors: [], failedRequests: [] };

function mark(name) {
    result.marks[name] = Date.now();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function open(browser, label) {
    // openkvs serves its own local CA's certificate: this context accepts it (HTTPS and WSS).
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    result.console[label] = [];
    page.on('console', (m) => {
        if (result.console[label].length < 100) result.console[label].push(`${m.type()}: ${m.text()}`.slice(0, 300));
    });
    page.on('pageerror', (e) => result.pageErrors.push(`${label}: ${String(e).slice(0, 300)}`));
    page.on('requestfailed', (r) => result.failedRequests.push(`${label}: ${r.method()} ${r.url().split('?')[0]} ${r.failure() && r.failure().errorText}`));
    await page.goto(cfg.app);
    return { context, page, label };
}

async function state(p) {
    return p.page.evaluate(() => window.kvsApp.state());
}

async function waitConnected(p, ms) {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
        const s = await state(p);
        if (s.fatal) throw new Error(`${p.label}: ${s.fatal}`);
        if (s.connectedAt !== null) return s.connectedAt;
        await sleep(200);
    }
    throw new Error(`${p.label} did not connect within ${ms} ms: ${JSON.stringify(await state(p)).slice(0, 2000)}`);
}

async function main() {
    const browser = await launch();
    const pages = {};
    try {
        mark('start');
        pages.A = await open(browser, 'A');
        await pages.A.page.evaluate((c) => window.kvsApp.startMaster(c), cfg.api);
        const connectedA = await waitConnected(pages.A, 30000);

        await sleep(cfg.viewerAfter * 1000);
        pages.V = await open(browser, 'V');
        mark('viewerStart');
        await pages.V.page.evaluate((c) => window.kvsApp.startViewer(c), { ...cfg.api, clientId: cfg.viewerId });
        await waitConnected(pages.V, 30000);
        await sleep(cfg.viewerSeconds * 1000);
        result.pages.V = await state(pages.V);
        await pages.V.page.evaluate(() => window.kvsApp.stop());
        mark('viewerStop');

        const rest = connectedA + cfg.masterSeconds * 1000 - Date.now();
        if (rest > 0) await sleep(rest);
        mark('takeover');
        pages.B = await open(browser, 'B');
        await pages.B.page.evaluate((c) => window.kvsApp.startMaster(c), { ...cfg.api, dropOffers: 1 });
        await waitConnected(pages.B, 40000);
        await sleep(cfg.takeoverSeconds * 1000);
        mark('end');
    } catch (e) {
        result.fatal = String((e && e.stack) || e).slice(0, 3000);
    } finally {
        for (const [label, p] of Object.entries(pages)) {
            try {
                if (!result.pages[label]) result.pages[label] = await state(p);
            } catch (e) {
                result.pageErrors.push(`${label}: state unavailable: ${e}`);
            }
        }
        await browser.close();
    }
    process.stdout.write(JSON.stringify(result) + '\n');
}

main();
