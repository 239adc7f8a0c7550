"""Browser tests of the chat page (headless Debian Chromium through Playwright)."""
