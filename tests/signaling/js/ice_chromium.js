// In headless Chromium, build an RTCPeerConnection from IceServerList entries the way the KVS
// WebRTC JS sample page does ({urls: Uris, username: Username, credential: Password}) and gather
// ICE candidates. Prints one JSON object: {<config name>: {error, candidates}}.
//
// Usage: node ice_chromium.js '{"policy": "relay"|"all", "configs": {<name>: [<IceServerList entry>, ...]}}'
'use strict';

const { launch } = require('../../js/chromium.js');

const cfg = JSON.parse(process.argv[2]);

async function gather(cfg) {
    const results = {};
    for (const [name, entries] of Object.entries(cfg.configs)) {
        try {
            const iceServers = entries.map((s) => ({ urls: s.Uris, username: s.Username, credential: s.Password }));
            const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: cfg.policy });
            const candidates = [];
            const started = Date.now();
            let ms = null;
            const complete = new Promise((resolve) => {
                pc.onicecandidate = (e) => (e.candidate ? candidates.push(e.candidate.candidate) : resolve());
                setTimeout(resolve, 15000);
            }).then(() => {
                ms = Date.now() - started;
            });
            pc.createDataChannel('probe');
            await pc.setLocalDescription(await pc.createOffer());
            await complete;
            pc.close();
            results[name] = { error: null, candidates, ms };
        } catch (e) {
            results[name] = { error: String(e), candidates: [] };
        }
    }
    return results;
}

async function main() {
    const browser = await launch();
    try {
        const page = await browser.newPage();
        const results = await page.evaluate(gather, cfg);
        process.stdout.write(JSON.stringify(results) + '\n');
    } finally {
        await browser.close();
    }
}

main().catch((e) => {
    process.stderr.write(String((e && e.stack) || e) + '\n');
    process.exit(1);
});
