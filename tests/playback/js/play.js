// Open the test page (hls.js or dash.js playing an openkvs session) in headless Chromium and
// sample the player's state every 500 ms. Prints one JSON object.
//
// Usage: node play.js '{"page": "<url>", "seconds": 12}'
'use strict';

const { launch } = require('../../js/chromium.js');

const cfg = JSON.parse(process.argv[2]);
const result = { samples: [], console: [], pageErrors: [], failedRequests: [] };

(async () => {
    const browser = await launch();
    try {
        const page = await browser.newPage();
        page.on('console', (m) => {
            if (result.console.length < 200) result.console.push(`${m.type()}: ${m.text()}`.slice(0, 400));
        });
        page.on('pageerror', (e) => result.pageErrors.push(String(e).slice(0, 400)));
        page.on('requestfailed', (r) => result.failedRequests.push(`${r.url().split('?')[0]} ${r.failure() && r.failure().errorText}`));
        page.on('response', (r) => {
            if (r.status() >= 400) result.failedRequests.push(`${r.url().split('?')[0]} HTTP ${r.status()}`);
        });
        await page.goto(cfg.page);
        const deadline = Date.now() + cfg.seconds * 1000;
        while (Date.now() < deadline) {
            await page.waitForTimeout(500);
            result.samples.push(await page.evaluate(() => window.playerState()));
        }
    } catch (e) {
        result.fatal = String(e);
    } finally {
        await browser.close();
    }
    process.stdout.write(JSON.stringify(result));
})();
