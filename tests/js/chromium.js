// Headless Chromium as every browser test starts it: Debian's chromium (or $CHROMIUM), a fake
// camera and microphone that need no permission prompt, and autoplay without a user gesture.
'use strict';

const { chromium } = require('playwright-core');

const ARGS = [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    '--autoplay-policy=no-user-gesture-required',
];

function launch() {
    return chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ARGS });
}

module.exports = { launch };
