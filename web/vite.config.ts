import { defineConfig } from 'vite';

// Output to web/build (git-ignored); the API serves it (GRIDBOOK_WEB_DIR=web/build).
export default defineConfig({
  base: '/',
  build: { outDir: 'build', emptyOutDir: true, sourcemap: true },
});
