#!/usr/bin/env node
import '../dist/control/cli/main.js';
