// Training items from the uint8 cache (filled in by the datasets work).
#pragma once

namespace neurovfm {}  // namespace neurovfm
