#include "neurovfm/items.hpp"
