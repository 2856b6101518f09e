import { config } from 'zod/mini';
import { en } from 'zod/locales';

// zod/mini carries no messages of its own ("Invalid input"); errors here name the field and what was
// wrong, so load the English ones (classic zod sets the same on import).
config(en());
